"""The 'stft' representation: (optionally compressed) magnitude STFT, D = n_fft // 2 + 1."""

from __future__ import annotations

import torch

from avgen_audio.compression import compress, expand
from avgen_audio.params import StftParams
from avgen_audio.spectral import SpectralRepresentation
from avgen import BuildContext


class StftRepresentation(SpectralRepresentation):
    """Magnitude spectrogram [B, n_fft // 2 + 1, F] (1025 x 22 for 0.5 s at 22 050 Hz)."""

    def __init__(self, params: StftParams) -> None:
        super().__init__(params)
        self.dim = self.bins

    def from_magnitude(self, magnitude: torch.Tensor) -> torch.Tensor:
        p = self.params
        return compress(magnitude, p.compression, p.log_offset, p.exponent)

    def to_magnitude(self, rep: torch.Tensor) -> torch.Tensor:
        p = self.params
        return expand(rep, p.compression, p.log_offset, p.exponent)


def make_stft(params: StftParams, context: BuildContext) -> StftRepresentation:
    """Factory registered as representation 'stft'."""
    return StftRepresentation(params)
