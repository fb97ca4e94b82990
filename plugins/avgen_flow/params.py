"""Params of the flow_matching generator and its loss."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer


class FlowParams(BaseModel):
    """Params of flow_matching: the network, the training path and the sampler."""

    model_config = ConfigDict(extra="forbid")

    hidden: int = Field(128, ge=8, le=4096, description="channels of the 1-D conv network over time")
    blocks: int = Field(4, ge=1, le=32, description="residual blocks (dilations 1, 2, 4, ... repeating every 4)")
    kernel: int = Field(3, ge=1, le=15, description="kernel size of the convolutions over time (odd)")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout inside the residual blocks")
    cond_dropout: float = Field(0.1, ge=0.0, lt=1.0,
                                description="probability a training clip's video is replaced by the learned "
                                            "null condition (what classifier-free guidance needs)")
    class_head: bool = Field(True, description="a linear class head on the mean frame feature, so class_nll and "
                                               "class accuracy apply (it does not change the flow)")
    class_condition: bool = Field(True, description="also condition the flow on the class head's probabilities "
                                                    "(the flow's counterpart of CAN's base sample)")
    class_pooling: Literal["mean_feature", "frame_probs"] = Field(
        "mean_feature", description="how the class head reads the frames: one linear layer on the mean frame feature, "
                                    "or the mean of its per-frame probabilities (CAN's pooling, Chen et al. 2018 Eq. 4)")
    base_sample: bool = Field(
        False, description="generate the residual to the class's base sample (its mean training representation, "
                           "as CAN adds it): the true class in training, the class head's argmax (or the forced "
                           "material) at generation; needs a class head")
    time_sampling: Literal["uniform", "logit_normal"] = Field(
        "logit_normal", description="distribution of the training time t: uniform, or sigmoid of a standard normal "
                                    "(more weight in the middle of the path)")
    sampler: Literal["euler", "midpoint", "heun"] = Field(
        "heun", description="ODE solver from noise (t = 0) to sound (t = 1); midpoint and heun cost 2 network "
                            "evaluations per step")
    steps: int = Field(8, ge=1, le=1000, description="solver steps at generation")
    guidance: float = Field(1.0, ge=0.0, le=20.0,
                            description="classifier-free guidance w: v = v_cond + w (v_cond - v_uncond); 0 = no "
                                        "guidance (half the cost)")
    seed: int = Field(0, ge=0, description="seed of the starting noise; the same seed gives the same sound for the "
                                           "same frames, whatever the batch or machine RNG state")
    temperature: float = Field(1.0, gt=0.0, le=2.0, description="scale of the starting noise")
    residual_scale: float = Field(
        1.0, ge=0.0, le=2.0, description="with base_sample, at generation: s' = base sample + residual_scale x the "
                                         "flow's residual; 1 = the flow's sample, 0 = the predicted class's base sample "
                                         "alone (the flow is then not run); training is the same whatever its value")

    @model_serializer(mode="wrap")
    def _new_keys_left_out_at_default(self, handler: Any) -> Any:
        """Keys added after runs were recorded are left out at their default, so the recipes, run ids and feature-cache
        keys of earlier runs stay what they were (those runs resume and load as before)."""
        data = handler(self)
        if isinstance(data, dict):
            for key, default in NEW_KEY_DEFAULTS.items():
                if data.get(key, default) == default:
                    data.pop(key, None)
        return data


NEW_KEY_DEFAULTS = {"residual_scale": 1.0}  # params added after flow runs were recorded, and their defaults


class FlowLossParams(BaseModel):
    """Params of flow_matching_mse."""

    model_config = ConfigDict(extra="forbid")
