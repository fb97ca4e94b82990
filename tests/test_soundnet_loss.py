"""The soundnet_perceptual loss (paper Eq. 7) and the soundnet_fd metric."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

import avgen
from avgen._core.errors import AvgenError, UnknownComponentError
from avgen import EvalContext
from soundnet_support import converted_home

RATE = 22050
SAMPLES = RATE // 2  # 0.5 s clips, as in the paper's Greatest Hits setting


@pytest.fixture
def weights_home(monkeypatch: pytest.MonkeyPatch) -> Path:
    home = converted_home()
    monkeypatch.setenv("AVGEN_HOME", str(home))
    return home


def hits(batch: int, seed: int, rate: int = RATE, samples: int = SAMPLES) -> torch.Tensor:
    """Decaying noise bursts: a stand-in for impact sounds."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / rate
    return 0.5 * torch.randn(batch, samples, generator=g) * torch.exp(-t * 12.0)


def smooth_l1(x: torch.Tensor) -> torch.Tensor:
    """Paper Eq. 6's g(x)."""
    return torch.where(x.abs() < 1, 0.5 * x * x, x.abs() - 0.5)


def test_loss_is_zero_for_identical_waves_and_positive_otherwise(weights_home: Path):
    loss = avgen.create("loss", "soundnet_perceptual")
    assert loss.needs_wave is True
    real = hits(4, 0)
    # zero up to rounding: the real clips' features are computed 8 rows at a time, the generated ones as their batch,
    # and the convolution's last bits depend on the batch size (a loss between different sounds is ~1e-4 and more)
    assert abs(loss({"wave": real.clone()}, {"wave": real}).item()) < 1e-12
    other = hits(4, 1)
    value = loss({"wave": other}, {"wave": real})
    expected = smooth_l1(loss.model.features(other) - loss.model.features(real)).mean()  # default: mean
    assert value.item() > 0
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
    summed = avgen.create("loss", "soundnet_perceptual", reduction="sum_per_clip_mean")({"wave": other}, {"wave": real})
    per_clip = smooth_l1(loss.model.features(other) - loss.model.features(real)).flatten(1).sum(1).mean()
    torch.testing.assert_close(summed, per_clip, rtol=1e-5, atol=1e-6)


def test_loss_gradient_reaches_the_generated_wave_only(weights_home: Path):
    loss = avgen.create("loss", "soundnet_perceptual")
    generated = hits(2, 3).requires_grad_(True)
    real = hits(2, 4).requires_grad_(True)
    loss.perceptual(generated, real).backward()
    assert generated.grad is not None and torch.isfinite(generated.grad).all() and generated.grad.abs().sum() > 0
    assert real.grad is None
    assert not any(p.requires_grad or p.grad is not None for p in loss.model.parameters())


def test_gradient_reaches_a_magnitude_spectrogram_through_istft_with_given_phase(weights_home: Path):
    """Decode like POCAN: s' (magnitude) with the real clip's phase, by torch.istft (Hann 2048)."""
    loss = avgen.create("loss", "soundnet_perceptual")
    real = hits(2, 5)
    window = torch.hann_window(2048)
    spec = torch.stft(real, 2048, 512, window=window, return_complex=True)
    magnitude = (spec.abs() * 0.7).requires_grad_(True)  # a generated s' that differs from the real one
    wave = torch.istft(torch.polar(magnitude, spec.angle()), 2048, 512, window=window, length=SAMPLES)
    value = loss({"wave": wave}, {"wave": real})
    value.backward()
    assert value.item() > 0 and magnitude.grad is not None and magnitude.grad.abs().sum() > 0


def test_gradient_reaches_the_stft_representation_through_its_decode(weights_home: Path):
    try:
        rep = avgen.create("representation", "stft")
    except UnknownComponentError:
        pytest.skip("the 'stft' representation (plugins/avgen_audio) is not registered yet")
    loss = avgen.create("loss", "soundnet_perceptual", context={"representation": rep})
    real = hits(2, 6, rate=rep.sample_rate, samples=rep.sample_rate // 2)
    s = (rep.encode(real) * 0.7).detach().requires_grad_(True)
    wave = rep.decode(s, phase="given", reference=real, length=real.shape[-1])
    value = loss({"wave": wave}, {"wave": real})
    value.backward()
    assert value.item() > 0 and s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_other_rates_are_resampled_to_22050(weights_home: Path):
    import torchaudio.functional as AF

    loss = avgen.create("loss", "soundnet_perceptual", sample_rate=8000)
    real, other = hits(2, 7, rate=8000, samples=4000), hits(2, 8, rate=8000, samples=4000)
    assert abs(loss({"wave": real}, {"wave": real}).item()) < 1e-12  # zero up to rounding, as above
    features = loss.model.features
    expected = smooth_l1(features(AF.resample(other, 8000, RATE)) - features(AF.resample(real, 8000, RATE)))
    torch.testing.assert_close(loss({"wave": other}, {"wave": real}), expected.mean())


def test_the_representation_sets_the_rate_and_a_conflict_is_an_error(weights_home: Path):
    class EightKilohertz:
        sample_rate = 8000

    loss = avgen.create("loss", "soundnet_perceptual", context={"representation": EightKilohertz()})
    assert loss.sample_rate == 8000
    with pytest.raises(AvgenError, match="sample_rate 22050 differs from the representation's 8000"):
        avgen.create("loss", "soundnet_perceptual", context={"representation": EightKilohertz()}, sample_rate=22050)


def test_loss_errors_are_one_line(weights_home: Path):
    loss = avgen.create("loss", "soundnet_perceptual")
    with pytest.raises(AvgenError, match="needs the generated waveform"):
        loss({"rep": torch.zeros(1)}, {"wave": hits(1, 0)})
    with pytest.raises(AvgenError, match="differ"):
        loss.perceptual(hits(1, 0), hits(1, 0, samples=SAMPLES + 10))
    with pytest.raises(AvgenError):
        avgen.create("loss", "soundnet_perceptual", layer="conv9")


# ---------------------------------------------------------------- Frechet distance


def frechet_with_scipy(mu1, cov1, mu2, cov2) -> float:
    """The textbook formula with scipy's general matrix square root."""
    with warnings.catch_warnings():  # rank-deficient covariances (fewer clips than channels) make it warn
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(cov1 @ cov2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1 + cov2 - 2 * covmean.real))


def test_frechet_distance_matches_scipy_sqrtm_and_the_1d_closed_form():
    from avgen_soundnet import frechet_distance

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((6, 6)), rng.standard_normal((6, 6))
    cov1, cov2 = a @ a.T + np.eye(6), b @ b.T + 0.5 * np.eye(6)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    assert frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(frechet_with_scipy(mu1, cov1, mu2, cov2), rel=1e-9)
    assert frechet_distance(mu1, cov1, mu1, cov1) == pytest.approx(0.0, abs=1e-9)
    # 1-D Gaussians: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]])) == pytest.approx(5.0)


def test_frechet_distance_is_stable_with_fewer_samples_than_dimensions():
    from avgen_soundnet import frechet_distance

    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((10, 64)), rng.standard_normal((10, 64)) + 0.5
    cov_x, cov_y = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    value = frechet_distance(x.mean(0), cov_x, y.mean(0), cov_y)
    assert np.isfinite(value) and value > 0
    assert value == pytest.approx(frechet_with_scipy(x.mean(0), cov_x, y.mean(0), cov_y), rel=1e-6)


@pytest.mark.parametrize("n1, n2, dim", [(10, 7, 64), (50, 40, 5)])  # fewer and more clips than channels
def test_frechet_distance_of_features_equals_the_covariance_form(n1: int, n2: int, dim: int):
    from avgen_soundnet.frechet import frechet_distance_of_features

    rng = np.random.default_rng(n1)
    x, y = rng.standard_normal((n1, dim)), 1.5 * rng.standard_normal((n2, dim)) + 0.3
    expected = frechet_with_scipy(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert frechet_distance_of_features(x, y) == pytest.approx(expected, rel=1e-6)


def eval_context(tmp_path: Path, real: torch.Tensor, generated: dict[str, torch.Tensor], rate: int = RATE) -> EvalContext:
    n = real.shape[0]
    return EvalContext(run_dir=tmp_path, sample_rate=rate, class_names=["hit"], test_ids=[str(i) for i in range(n)],
                       test_labels=torch.zeros(n, dtype=torch.long), real_waves=real, generated=generated)


def test_soundnet_fd_is_zero_for_the_real_audio_and_grows_with_the_difference(weights_home: Path, tmp_path: Path):
    from avgen_soundnet.frechet import gaussian_stats, pooled_features

    metric = avgen.create("metric", "soundnet_fd")
    real = hits(12, 10)
    near, far = real + 0.01 * hits(12, 11), torch.sin(torch.arange(SAMPLES) * 0.3).repeat(12, 1) * hits(12, 12)
    values = metric.compute(eval_context(tmp_path, real, {"raw": real.clone(), "exemplar": near}))
    assert set(values) == {"fd_raw", "fd_exemplar"}
    assert values["fd_raw"] == pytest.approx(0.0, abs=1e-6)
    far_value = metric.compute(eval_context(tmp_path, real, {"raw": far}))
    assert set(far_value) == {"fd_raw"} and far_value["fd_raw"] > values["fd_exemplar"] > 0
    assert all(round(v, 6) == v for v in (*values.values(), *far_value.values()))  # 6 decimals, as docs say


def test_soundnet_fd_equals_scipy_sqrtm_on_the_pooled_features(weights_home: Path, tmp_path: Path):
    from avgen_soundnet import load_soundnet8
    from avgen_soundnet.frechet import gaussian_stats, pooled_features

    real, generated = hits(40, 20), hits(40, 21) * 0.5
    value = avgen.create("metric", "soundnet_fd", layer="conv5").compute(eval_context(tmp_path, real, {"raw": generated}))
    model = load_soundnet8()
    feats_real = pooled_features(model, real, RATE, "conv5", 32, torch.device("cpu"))
    feats_gen = pooled_features(model, generated, RATE, "conv5", 32, torch.device("cpu"))
    assert feats_real.shape == (40, 256)
    expected = frechet_with_scipy(*gaussian_stats(feats_gen), *gaussian_stats(feats_real))
    assert value["fd_raw"] == pytest.approx(expected, rel=1e-4)


def test_soundnet_fd_needs_generated_audio_and_weights(tmp_path: Path, avgen_home: Path):
    metric = avgen.create("metric", "soundnet_fd")
    with pytest.raises(AvgenError, match="no generated audio"):
        metric.compute(eval_context(tmp_path, hits(3, 0), {}))
    with pytest.raises(AvgenError, match="`avgen weights fetch soundnet`"):
        metric.compute(eval_context(tmp_path, hits(3, 0), {"raw": hits(3, 1)}))
