"""flow_matching_mse: the conditional flow-matching objective, E ||v(x_t, t, video) - (x1 - x0)||^2."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from avgen import AvgenError, BuildContext, Loss
from avgen_flow.params import FlowLossParams


class FlowMatchingMse(Loss):
    """Mean squared error between the predicted and the target velocity, over bins, frames and clips."""

    needs_wave = False
    needs = frozenset({"velocity", "velocity_target"})

    def __call__(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> Tensor:
        if "velocity" not in outputs or "velocity_target" not in outputs:
            raise AvgenError("loss 'flow_matching_mse' needs a flow generator's velocities (outputs: "
                             + ", ".join(sorted(outputs)) + "); use generator flow_matching")
        predicted, target = outputs["velocity"].float(), outputs["velocity_target"].float()
        if predicted.shape != target.shape:
            raise AvgenError(f"loss 'flow_matching_mse': velocity {tuple(predicted.shape)} and target "
                             f"{tuple(target.shape)} differ")
        return torch.mean((predicted - target) ** 2)


def make_flow_matching_mse(params: FlowLossParams, context: BuildContext) -> FlowMatchingMse:
    return FlowMatchingMse()
