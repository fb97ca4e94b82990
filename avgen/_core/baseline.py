"""The trivial baseline a generator must beat: predict the training mean for every clip.

Its outputs are the generator's ``mean_outputs`` (by default the mean training representation;
a generator adds what its losses score, e.g. a class prior); each loss of the recipe that can
score them is evaluated on the validation split, so a run can print its own val losses next to
the baseline's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from avgen._core.errors import AvgenError


def baseline_losses(losses: list[Any], generator: Any, train: dict[str, Tensor], val: dict[str, Tensor],
                    batch_size: int = 256) -> dict[str, float]:
    """{loss name: value} of the mean predictor on ``val`` for every loss that scores it without audio.

    Scored ``batch_size`` clips at a time and averaged weighted by clip count, as fit validates.
    """
    count = int(val["rep"].shape[0])
    outputs = generator.mean_outputs(train, count)
    scores: dict[str, float] = {}
    for loss in losses:
        if loss.fn.needs_wave:
            continue  # e.g. a perceptual loss: it would need the decoded mean waveform
        try:
            with torch.no_grad():
                total = 0.0
                for start in range(0, count, batch_size):
                    part = slice(start, start + batch_size)
                    rows = {k: v[part] for k, v in outputs.items()}
                    total += float(loss.fn(rows, {k: v[part] for k, v in val.items()})) * min(batch_size, count - start)
                scores[loss.name] = total / max(count, 1)
        except (AvgenError, KeyError):
            continue  # the loss needs an output the mean predictor does not have
    return scores


def compare_line(best: dict[str, float], baseline: dict[str, float], epoch: int) -> str:
    """'val at epoch 12: spec_smooth_l1 0.0792 vs 0.0901 for the training mean (-12.1 %)'."""
    parts = []
    for name, value in baseline.items():
        if name in best:
            change = 100.0 * (best[name] - value) / value if value else float("nan")
            parts.append(f"{name} {best[name]:.4g} vs {value:.4g} for the training mean ({change:+.1f} %)")
    return f"val at epoch {epoch}: " + "; ".join(parts) if parts else ""
