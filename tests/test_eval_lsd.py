"""Log-spectral distance against a numpy STFT written here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import avgen
from avgen import EvalContext
from avgen_eval.lsd import log_spectral_distance


def numpy_lsd(real: np.ndarray, gen: np.ndarray, n_fft: int, hop: int, eps: float) -> np.ndarray:
    """Framing with n_fft/2 zeros on both sides (centred frames), periodic Hann, rfft; per-clip LSD."""
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)

    def log_power(x: np.ndarray) -> np.ndarray:
        padded = np.pad(x, (n_fft // 2, n_fft // 2))
        frames = 1 + (len(padded) - n_fft) // hop
        stack = np.stack([padded[i * hop : i * hop + n_fft] * window for i in range(frames)])
        return np.log10(np.abs(np.fft.rfft(stack, axis=1)) ** 2 + eps)  # [frames, bins]

    out = []
    for r, g in zip(real, gen):
        diff = log_power(r.astype(np.float64)) - log_power(g.astype(np.float64))
        out.append(np.mean(np.sqrt(np.mean(diff**2, axis=1))))
    return np.array(out)


def test_matches_numpy_reference():
    rng = np.random.default_rng(0)
    real = rng.standard_normal((3, 4000)).astype(np.float32)
    gen = (0.5 * real + 0.3 * rng.standard_normal((3, 4000))).astype(np.float32)
    ours = log_spectral_distance(torch.from_numpy(real), torch.from_numpy(gen), n_fft=512, hop=128, eps=1e-10).numpy()
    np.testing.assert_allclose(ours, numpy_lsd(real, gen, 512, 128, 1e-10), rtol=1e-6)
    assert torch.all(log_spectral_distance(torch.from_numpy(real), torch.from_numpy(real)) == 0)


def test_scaling_by_a_gain_gives_the_log_gain():
    # a gain g changes every log10 power by 2 log10 g, so the LSD is exactly |2 log10 g|
    wave = torch.randn(2, 3000, dtype=torch.float64)
    lsd = log_spectral_distance(wave, 10.0 * wave, n_fft=256, hop=64, eps=1e-30)
    np.testing.assert_allclose(lsd.numpy(), [2.0, 2.0], rtol=1e-6)


def test_metric_per_kind_and_without_generated(tmp_path):
    rng = np.random.default_rng(1)
    real = torch.from_numpy(rng.standard_normal((4, 8000)).astype(np.float32))
    raw = real + 0.1 * torch.from_numpy(rng.standard_normal((4, 8000)).astype(np.float32))
    ctx = EvalContext(run_dir=tmp_path, sample_rate=16000, class_names=["a"], test_ids=list("abcd"),
                      test_labels=torch.zeros(4, dtype=torch.long), real_waves=real,
                      generated={"raw": raw, "exemplar": real.flip(0)})
    result = avgen.create("metric", "log_spectral_distance").compute(ctx)
    expected = numpy_lsd(real.numpy(), raw.numpy(), 2048, 512, 1e-10).mean()
    assert result["lsd_raw"] == pytest.approx(expected, abs=1e-6)
    assert set(result) == {"lsd_raw", "lsd_exemplar"} and result["lsd_raw"] < result["lsd_exemplar"]
    ctx.generated = {}
    assert avgen.create("metric", "log_spectral_distance").compute(ctx) == {}
