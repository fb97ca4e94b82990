"""Losses of the LSTM generators: class_nll (paper Eq. 4) and spec_smooth_l1 (paper Eq. 6)."""

from __future__ import annotations

from typing import Literal, Mapping

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from avgen import AvgenError, BuildContext, Loss


class ClassNllParams(BaseModel):
    """Params of class_nll."""

    model_config = ConfigDict(extra="forbid")

    eps: float = Field(1e-12, gt=0, le=1e-3, description="floor on p[c] before the log, so a zero probability gives a finite loss")


class SmoothL1Params(BaseModel):
    """Params of spec_smooth_l1."""

    model_config = ConfigDict(extra="forbid")

    beta: float = Field(1.0, gt=0, description="where the loss turns from quadratic to linear (paper: 1)")
    reduction: Literal["sum_per_clip_mean", "mean"] = Field(
        "mean",
        description="'mean': mean over all values (default; TensorFlow's huber_loss default, and the only one under "
                    "which lambda = 50 leaves the class loss any say, see docs/generators.md); 'sum_per_clip_mean': "
                    "sum over bins and frames as Eq. 6 is written, mean over clips",
    )


class ClassNll(Loss):
    """L_cls = -log p[c], averaged over the clips of the batch that have a class (label >= 0)."""

    needs_wave = False
    needs = frozenset({"probs"})  # a class head's [B, C] probabilities (can_lstm; flow_matching with class_head)

    def __init__(self, params: ClassNllParams) -> None:
        self.eps = params.eps

    def __call__(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if "probs" not in outputs:
            raise AvgenError(
                "loss 'class_nll' needs class probabilities, but the generator has no class head "
                "(outputs: " + ", ".join(sorted(outputs)) + "); use can_lstm or remove class_nll from [[loss]]"
            )
        probs = outputs["probs"].float()
        labels = batch["label"].to(probs.device, torch.long)
        known = labels >= 0
        picked = probs[known].gather(1, labels[known][:, None]).squeeze(1)
        if picked.numel() == 0:
            return probs.sum() * 0.0
        return -picked.clamp_min(self.eps).log().mean()


class SpecSmoothL1(Loss):
    """L_reg = sum smooth-L1(s' - s) with beta = 1, per clip, averaged over the batch (paper Eq. 6)."""

    needs_wave = False
    needs = frozenset({"rep"})

    def __init__(self, params: SmoothL1Params) -> None:
        self.beta = params.beta
        self.reduction = params.reduction

    def __call__(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        predicted, target = outputs["rep"].float(), batch["rep"].float()
        if predicted.shape != target.shape:
            raise AvgenError(
                f"loss 'spec_smooth_l1': generated rep {tuple(predicted.shape)} and target rep {tuple(target.shape)} differ; "
                "the generator's shape must match the representation"
            )
        values = F.smooth_l1_loss(predicted, target, reduction="none", beta=self.beta)
        if self.reduction == "mean":
            return values.mean()
        return values.flatten(1).sum(1).mean()


def make_class_nll(params: ClassNllParams, context: BuildContext) -> ClassNll:
    return ClassNll(params)


def make_spec_smooth_l1(params: SmoothL1Params, context: BuildContext) -> SpecSmoothL1:
    return SpecSmoothL1(params)
