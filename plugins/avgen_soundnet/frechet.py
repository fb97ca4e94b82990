"""The `soundnet_fd` metric: Frechet distance between SoundNet feature statistics of generated and real audio."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from avgen import AvgenError, BuildContext, EvalContext, Metric
from avgen_soundnet.model import SoundNet8, load_soundnet8
from avgen_soundnet.perceptual import BodyLayer, waves_to_soundnet_rate


class FrechetParams(BaseModel):
    """Params of soundnet_fd."""

    model_config = ConfigDict(extra="forbid")

    layer: BodyLayer = Field("conv7", description="SoundNet layer whose time-averaged features are compared")
    batch_size: int = Field(32, ge=1, le=100000, description="clips per SoundNet forward pass")
    sources: list[Literal["raw", "exemplar"]] = Field(
        ["raw", "exemplar"], description="generated audio to score (each present one gives fd_<source>)"
    )


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2), by symmetric eigen-decompositions (float64).

    Uses tr((C1 C2)^1/2) = tr((C1^1/2 C2 C1^1/2)^1/2), whose inner matrix is symmetric PSD, so rank-deficient
    covariances (fewer clips than channels) stay stable.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    vals, vecs = np.linalg.eigh((cov1 + cov1.T) / 2)
    root1 = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    inner = root1 @ cov2 @ root1
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * trace_root, 0.0))


def frechet_distance_of_features(x: np.ndarray, y: np.ndarray) -> float:
    """Frechet distance between the Gaussians fitted to features x [N1, C] and y [N2, C] (unbiased covariances).

    With C1 = A^T A and C2 = B^T B (A, B the centred features over sqrt(N - 1)), tr((C1 C2)^1/2) is the sum of
    the singular values of A B^T [N1, N2]: exact and cheap when there are fewer clips than channels.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError("the Frechet distance needs at least 2 feature vectors per set")
    if x.shape[0] * y.shape[0] > x.shape[1] ** 2:
        return frechet_distance(*gaussian_stats(x), *gaussian_stats(y))
    a = (x - x.mean(0)) / np.sqrt(x.shape[0] - 1)
    b = (y - y.mean(0)) / np.sqrt(y.shape[0] - 1)
    trace_root = np.linalg.svd(a @ b.T, compute_uv=False).sum()
    diff = x.mean(0) - y.mean(0)
    return float(max(diff @ diff + (a * a).sum() + (b * b).sum() - 2 * trace_root, 0.0))


def pooled_features(model: SoundNet8, waves: torch.Tensor, sample_rate: int, layer: str, batch_size: int,
                    device: torch.device) -> np.ndarray:
    """Time-averaged SoundNet features [N, C] (float64) of waveforms [N, T]."""
    model.to(device)
    chunks = []
    with torch.no_grad():
        for start in range(0, waves.shape[0], batch_size):
            batch = waves_to_soundnet_rate(waves[start:start + batch_size].to(device).float(), sample_rate)
            chunks.append(model.features(batch, layer).mean(dim=-1).double().cpu())
    return torch.cat(chunks).numpy()


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [C] and unbiased covariance [C, C] of features [N, C]."""
    return features.mean(axis=0), np.cov(features, rowvar=False)


class SoundNetFrechet(Metric):
    """fd_<source>: Frechet distance of time-pooled SoundNet features, generated vs real test audio."""

    needs = frozenset({"rep"})  # generated sound: a [generator]

    def __init__(self, params: FrechetParams) -> None:
        self.params = params

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        present = [s for s in self.params.sources if s in ctx.generated]
        if not present:
            raise AvgenError(
                f"metric 'soundnet_fd': the run has no generated audio among {self.params.sources} "
                f"(it has {sorted(ctx.generated) or 'none'}); add a [generator] or remove soundnet_fd from [[metric]]"
            )
        if ctx.real_waves.shape[0] < 2:
            raise AvgenError(f"metric 'soundnet_fd' needs at least 2 test clips, the split has {ctx.real_waves.shape[0]}")
        model = load_soundnet8()
        extract = dict(sample_rate=ctx.sample_rate, layer=self.params.layer, batch_size=self.params.batch_size,
                       device=ctx.device)
        real = pooled_features(model, ctx.real_waves, **extract)
        return {f"fd_{source}": round(float(frechet_distance_of_features(pooled_features(model, ctx.generated[source], **extract), real)), 6)
                for source in present}  # 6 decimals, as every metric (docs/evaluation.md)


def make_soundnet_fd(params: FrechetParams, context: BuildContext) -> SoundNetFrechet:
    return SoundNetFrechet(params)
