"""Params (recipe sections) of the audio representations."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SpectralParams(BaseModel):
    """What every STFT-based representation shares: analysis, Griffin-Lim, compression."""

    model_config = ConfigDict(extra="forbid")

    sample_rate: int = Field(22050, ge=1000, le=384000, description="Rate (Hz) the representation works at; other input rates are resampled.")
    n_fft: int = Field(2048, ge=16, le=65536, description="FFT size and window length in samples.")
    hop_length: int = Field(512, gt=0, le=65536, description="Samples between frames.")
    window: str = Field("hann", description="scipy.signal.get_window name (periodic), as in librosa.")
    center: bool = Field(True, description="Pad n_fft // 2 on both sides so frame t is centred at t * hop_length.")
    pad_mode: Literal["constant", "reflect"] = Field(
        "constant", description="Padding when centred; 'constant' (zeros) is librosa's default."
    )
    backend: Literal["nnaudio", "torch"] = Field(
        "torch", description="Encoder STFT: torch.fft, or nnAudio's conv1d STFT (5x slower on CPU; same magnitudes to "
                             "float32 rounding; the default of version 1, which runs recorded at it keep)."
    )
    n_iter: int = Field(32, ge=0, le=10000, description="Griffin-Lim iterations for phase='griffin_lim'.")
    momentum: float = Field(0.99, ge=0.0, le=1.0, description="Fast Griffin-Lim momentum (librosa's default 0.99; 0 = classic).")
    griffin_lim_init: Literal["random", "zero"] = Field(
        "random", description="Griffin-Lim starting phase: uniform random (librosa's default) or zero."
    )
    seed: int = Field(0, ge=0, lt=2**32, description="Seed of the random phases (phase='random' and the Griffin-Lim start).")


class StftParams(SpectralParams):
    """Magnitude STFT."""

    compression: Literal["none", "log", "power"] = Field(
        "none", description="Magnitude compression: none, log(mag + log_offset) or mag ** exponent (inverted exactly on decode)."
    )
    log_offset: float = Field(1e-5, gt=0.0, description="Offset inside the log for compression='log'.")
    exponent: float = Field(0.3, gt=0.0, description="Exponent for compression='power'.")


class CochleagramParams(SpectralParams):
    """ERB-spaced cochleagram over the STFT."""

    n_bands: int = Field(42, ge=2, le=1024, description="Number of ERB-spaced cosine bands (42 in Owens et al.).")
    low_hz: float = Field(20.0, ge=0.0, le=192000.0, description="Centre frequency (Hz) of the lowest band.")
    high_hz: float | None = Field(
        None, gt=0.0, description="Centre frequency (Hz) of the highest band; default min(10 000, sample_rate / 2)."
    )
    inverse_iter: int = Field(
        30, ge=0, description="Non-negative least-squares (multiplicative) refinements of the filterbank pseudo-inverse on decode."
    )
    compression: Literal["none", "log", "power"] = Field(
        "power", description="Envelope compression: power (McDermott & Simoncelli, exponent 0.3), log or none."
    )
    log_offset: float = Field(1e-5, gt=0.0, description="Offset inside the log for compression='log'.")
    exponent: float = Field(0.3, gt=0.0, description="Exponent for compression='power'.")
