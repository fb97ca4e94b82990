"""Time alignment of visual features to the audio representation's frames."""

from __future__ import annotations

import torch


def replicate_to_steps(features: torch.Tensor, steps: int) -> torch.Tensor:
    """Nearest-index upsampling of [..., N, dim] frame features to [..., steps, dim].

    Step i takes frame floor(i * N / steps) (paper section 3.4: frames are replicated
    uniformly in time, not interpolated).
    """
    n = features.shape[-2]
    if n < 1:
        raise ValueError("cannot replicate an empty frame sequence")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    index = torch.div(torch.arange(steps, device=features.device) * n, steps, rounding_mode="floor")
    return features.index_select(-2, index)
