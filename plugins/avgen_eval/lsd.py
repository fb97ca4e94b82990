"""Log-spectral distance between the real and the generated sound of each test clip."""

from __future__ import annotations

import logging

import torch
from pydantic import BaseModel, ConfigDict, Field

from avgen import BuildContext, EvalContext, Metric

log = logging.getLogger("avgen.eval.lsd")


class LsdParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_fft: int = Field(default=2048, ge=16, description="STFT window (samples), Hann")
    hop: int = Field(default=512, ge=1, description="STFT hop (samples)")
    eps: float = Field(default=1e-10, gt=0, description="floor added to the power spectrum before log10")


def log_spectral_distance(real: torch.Tensor, generated: torch.Tensor, n_fft: int = 2048, hop: int = 512, eps: float = 1e-10) -> torch.Tensor:
    """Per clip [N]: mean over frames of sqrt(mean over bins of (log10 P_real - log10 P_gen)^2), P = |STFT|^2."""
    if real.shape != generated.shape:
        raise ValueError(f"log_spectral_distance: real {tuple(real.shape)} and generated {tuple(generated.shape)} differ")
    window = torch.hann_window(n_fft, dtype=torch.float64, device=real.device)

    def log_power(x: torch.Tensor) -> torch.Tensor:
        x = x.double()
        if x.shape[-1] <= n_fft // 2:
            x = torch.nn.functional.pad(x, (0, n_fft // 2 + 1 - x.shape[-1]))
        spec = torch.stft(x, n_fft, hop, window=window, center=True, pad_mode="constant", return_complex=True)
        return torch.log10(spec.abs().pow(2) + eps)  # [N, bins, frames]

    diff = log_power(real) - log_power(generated.to(real.device))
    return diff.pow(2).mean(dim=1).sqrt().mean(dim=1)


class LogSpectralDistance(Metric):
    """The log_spectral_distance metric: lsd_<kind> per generated kind (lower is closer)."""

    def __init__(self, params: LsdParams) -> None:
        self.params = params

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        if not ctx.generated:
            log.info("log_spectral_distance: no generated sound in this run; nothing to compare")
            return {}
        p = self.params
        return {
            f"lsd_{kind}": round(float(log_spectral_distance(ctx.real_waves, waves, p.n_fft, p.hop, p.eps).mean()), 6)
            for kind, waves in ctx.generated.items()
        }


def make_lsd(params: LsdParams, context: BuildContext) -> LogSpectralDistance:
    return LogSpectralDistance(params)
