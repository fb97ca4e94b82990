"""Amplitude compression of magnitudes/envelopes and its exact inverse."""

from __future__ import annotations

import torch

FLOOR = 1e-12  # keeps gradients of x ** exponent finite at silent bins


def compress(values: torch.Tensor, mode: str, log_offset: float, exponent: float) -> torch.Tensor:
    """Compress non-negative values: 'none', 'log' (log(x + offset)) or 'power' (x ** exponent)."""
    if mode == "none":
        return values
    if mode == "log":
        return torch.log(values + log_offset)
    return values.clamp_min(FLOOR) ** exponent


def expand(values: torch.Tensor, mode: str, log_offset: float, exponent: float) -> torch.Tensor:
    """Inverse of :func:`compress`; results below zero (from a regressor) are clamped to zero."""
    if mode == "none":
        return values.clamp_min(0.0)
    if mode == "log":
        return (torch.exp(values) - log_offset).clamp_min(0.0)
    return values.clamp_min(FLOOR) ** (1.0 / exponent)
