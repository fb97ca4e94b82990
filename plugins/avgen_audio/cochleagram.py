"""The 'cochleagram' representation: ERB-spaced band envelopes over the STFT, compressed.

Bands are half-cosine bumps on the ERB-number scale (Glasberg & Moore 1990), as in
McDermott & Simoncelli (2011): band b covers the ERB interval between its neighbours'
centres, the end bands stay flat beyond the outer centres, and the squared responses of
all bands sum to one at every frequency. A band's envelope is the root of the STFT power
it passes; envelopes are compressed (power 0.3 by default).
"""

from __future__ import annotations

import math

import torch

from avgen import AvgenError, BuildContext
from avgen_audio.compression import compress, expand
from avgen_audio.params import CochleagramParams
from avgen_audio.spectral import SpectralRepresentation

DEFAULT_HIGH_HZ = 10000.0
TINY_POWER = 1e-20  # keeps power strictly positive (multiplicative updates, sqrt gradient)


def hz_to_erb_number(hz: torch.Tensor) -> torch.Tensor:
    """ERB-number (Cams) of a frequency, Glasberg & Moore (1990): 21.4 log10(1 + 0.00437 f)."""
    return 21.4 * torch.log10(1.0 + 0.00437 * hz)


def erb_number_to_hz(erb: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`hz_to_erb_number`."""
    return (torch.pow(10.0, erb / 21.4) - 1.0) / 0.00437


def erb_filterbank(n_bands: int, low_hz: float, high_hz: float, n_fft: int, sample_rate: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Amplitude responses [n_bands, n_fft // 2 + 1] on the STFT bins and band centres [n_bands] (Hz), float64."""
    bin_hz = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft
    low, high = hz_to_erb_number(torch.tensor([low_hz, high_hz], dtype=torch.float64))
    centres = torch.linspace(float(low), float(high), n_bands, dtype=torch.float64)
    spacing = (high - low) / (n_bands - 1)
    offset = (hz_to_erb_number(bin_hz)[None, :] - centres[:, None]) / spacing  # in band spacings
    offset[0] = offset[0].clamp_min(0.0)  # lowest band: flat below its centre
    offset[-1] = offset[-1].clamp_max(0.0)  # highest band: flat above its centre
    response = torch.where(offset.abs() < 1.0, torch.cos(0.5 * math.pi * offset), torch.zeros_like(offset))
    return response, erb_number_to_hz(centres)


class CochleagramRepresentation(SpectralRepresentation):
    """Compressed ERB band envelopes [B, n_bands, F]; decode = filterbank pseudo-inverse (NNLS-refined) + Griffin-Lim."""

    def __init__(self, params: CochleagramParams) -> None:
        super().__init__(params)
        nyquist = params.sample_rate / 2
        high_hz = min(DEFAULT_HIGH_HZ, nyquist) if params.high_hz is None else params.high_hz
        if not params.low_hz < high_hz <= nyquist:
            raise AvgenError(f"cochleagram band limits low_hz {params.low_hz} / high_hz {high_hz} must satisfy low_hz < high_hz <= sample_rate / 2 = {nyquist}; change low_hz or high_hz")
        self.dim = params.n_bands
        self.low_hz, self.high_hz = params.low_hz, high_hz
        response, centres = erb_filterbank(params.n_bands, params.low_hz, high_hz, params.n_fft, params.sample_rate)
        power = response**2  # band energy = power @ |X|^2
        self.register_buffer("centre_hz", centres.float(), persistent=False)
        self.register_buffer("band_power", power.float(), persistent=False)
        self.register_buffer("band_power_pinv", torch.linalg.pinv(power).float(), persistent=False)

    def from_magnitude(self, magnitude: torch.Tensor) -> torch.Tensor:
        envelope = torch.sqrt(torch.matmul(self.band_power, magnitude.square()))
        p = self.params
        return compress(envelope, p.compression, p.log_offset, p.exponent)

    def to_magnitude(self, rep: torch.Tensor) -> torch.Tensor:
        p = self.params
        energy = expand(rep, p.compression, p.log_offset, p.exponent).square()
        power = torch.matmul(self.band_power_pinv, energy).clamp_min(0.0) + TINY_POWER
        # Clamping the pseudo-inverse breaks band_power @ power == energy; multiplicative
        # NNLS steps (Lee & Seung) restore much of it while keeping the power non-negative.
        target = torch.matmul(self.band_power.T, energy)
        for _ in range(self.params.inverse_iter):
            power = power * target / (torch.matmul(self.band_power.T, torch.matmul(self.band_power, power)) + TINY_POWER)
        return torch.sqrt(power)


def make_cochleagram(params: CochleagramParams, context: BuildContext) -> CochleagramRepresentation:
    """Factory registered as representation 'cochleagram'."""
    return CochleagramRepresentation(params)
