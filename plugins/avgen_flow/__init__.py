"""Conditional flow matching: the generator flow_matching and its loss flow_matching_mse."""

from __future__ import annotations

from avgen import hookimpl
from avgen_flow.loss import FlowMatchingMse, make_flow_matching_mse
from avgen_flow.model import FlowMatching, integrate, make_flow_matching
from avgen_flow.params import FlowLossParams, FlowParams

FLOW = "Lipman et al. 2023, Flow Matching for Generative Modeling, ICLR; Liu et al. 2023, Rectified Flow, ICLR"
CFG = "Ho & Salimans 2022, Classifier-Free Diffusion Guidance"

__all__ = ["FlowLossParams", "FlowMatching", "FlowMatchingMse", "FlowParams", "integrate"]


@hookimpl
def register_generators(register):
    register(
        "flow_matching", make_flow_matching, params=FlowParams,
        summary="conditional flow matching (rectified flow) over the representation, conditioned on the frames; "
                "Euler/midpoint/Heun sampler with classifier-free guidance",
        card={"paper": f"{FLOW}; {CFG}", "equation": "x_t = (1-t) x0 + t x1, v -> x1 - x0; s' = ODE solve 0 -> 1",
              "license": "MIT"},
    )


@hookimpl
def register_losses(register):
    register(
        "flow_matching_mse", make_flow_matching_mse, params=FlowLossParams,
        summary="flow-matching objective: mean squared error of the predicted velocity against x1 - x0 "
                "(needs flow_matching)",
        card={"paper": FLOW, "equation": "E_t,x0 ||v(x_t, t, video) - (x1 - x0)||^2"},
    )
