"""The 'stft' representation against librosa and torch: encode, ISTFT, Griffin-Lim, gradients."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

import avgen
from avgen import AvgenError

SR = 22050


def impacts(batch: int, samples: int = 11025, sr: int = SR, seed: int = 0) -> np.ndarray:
    """Decaying harmonic tones plus noise bursts at random onsets: impact-like test clips."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / sr
    clips = []
    for _ in range(batch):
        y = np.zeros(samples)
        for _ in range(3):
            onset, f0, decay = rng.uniform(0, 0.8 * t[-1]), rng.uniform(200, 3000), rng.uniform(10, 40)
            env = np.where(t >= onset, np.exp(-(t - onset) * decay), 0.0)
            y += env * sum(np.sin(2 * np.pi * f0 * k * 1.01 * (t - onset)) / k for k in range(1, 4))
            y += 0.3 * env * rng.standard_normal(samples) * np.exp(-(t - onset) * 80)
        clips.append(0.5 * y / np.abs(y).max())
    return np.stack(clips).astype(np.float32)


def spectral_convergence(magnitude: np.ndarray, wave: np.ndarray, **stft_args) -> np.ndarray:
    """||S - |STFT(y)||| / ||S|| per clip, with librosa's STFT."""
    rebuilt = np.abs(librosa.stft(wave, **stft_args))
    return np.linalg.norm(rebuilt - magnitude, axis=(-2, -1)) / np.linalg.norm(magnitude, axis=(-2, -1))


def snr_db(clean: torch.Tensor, estimate: torch.Tensor) -> float:
    return float(10 * torch.log10(clean.pow(2).sum() / (clean - estimate).pow(2).sum()))


def test_registered_with_params_and_buildable():
    names = [c.name for c in avgen.list_components("representation")]
    assert "stft" in names and "cochleagram" in names
    component = avgen.get_component("representation", "stft")
    assert component.plugin == "audio"
    assert {"n_fft", "hop_length", "n_iter", "momentum", "compression"} <= set(component.params.model_fields)
    rep = avgen.create("representation", "stft", n_fft=512)
    assert isinstance(rep, torch.nn.Module)
    assert rep.dim == 257 and rep.n_iter == 32 and rep.momentum == 0.99
    assert rep.encode(torch.zeros(1, 4000)).shape == (1, 257, 1 + 4000 // 512)


@pytest.mark.parametrize(
    ("sample_rate", "seconds", "frames"), [(22050, 0.5, 22), (8000, 10.0, 157)]
)
def test_shapes_of_the_paper_settings(sample_rate, seconds, frames):
    rep = avgen.create("representation", "stft", sample_rate=sample_rate)
    samples = round(seconds * sample_rate)
    assert rep.frames(samples) == frames
    assert rep.encode(torch.randn(2, samples)).shape == (2, 1025, frames)


@pytest.mark.parametrize("backend", ["nnaudio", "torch"])
@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
def test_encode_matches_librosa(backend, pad_mode):
    wave = impacts(3)
    rep = avgen.create("representation", "stft", backend=backend, pad_mode=pad_mode)
    ours = rep.encode(torch.from_numpy(wave)).numpy()
    expected = np.abs(librosa.stft(wave.astype(np.float64), n_fft=2048, hop_length=512, pad_mode=pad_mode))
    assert ours.shape == expected.shape
    assert np.linalg.norm(ours - expected) / np.linalg.norm(expected) < 1e-4
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4 * expected.max())


def test_encode_defaults_match_librosa_defaults():
    wave = impacts(1)[0]
    ours = avgen.create("representation", "stft").encode(torch.from_numpy(wave)[None])[0].numpy()
    expected = np.abs(librosa.stft(wave.astype(np.float64)))  # librosa's own defaults
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4 * expected.max())


@pytest.mark.parametrize("compression", ["none", "log", "power"])
def test_given_phase_reconstructs_the_waveform(compression):
    wave = torch.from_numpy(impacts(2))
    rep = avgen.create("representation", "stft", compression=compression)
    decoded = rep.decode(rep.encode(wave), phase="given", reference=wave)
    assert decoded.shape == wave.shape
    assert snr_db(wave, decoded) > 60


def test_compression_inverse_is_exact():
    magnitude = torch.rand(2, 1025, 22, dtype=torch.float64) + 1e-3
    for compression, forward in [("log", lambda m: torch.log(m + 1e-5)), ("power", lambda m: m**0.3)]:
        rep = avgen.create("representation", "stft", compression=compression).double()
        assert torch.allclose(rep.from_magnitude(magnitude), forward(magnitude))
        assert torch.allclose(rep.to_magnitude(rep.from_magnitude(magnitude)), magnitude, rtol=1e-12)


def test_griffin_lim_equals_librosa_in_float64():
    """Same start (zero phase), same iterations: the same algorithm gives the same waveform."""
    wave = impacts(2, samples=4096)
    rep = avgen.create("representation", "stft", n_fft=256, hop_length=64, n_iter=16, griffin_lim_init="zero").double()
    magnitude = rep.encode(torch.from_numpy(wave).double())
    ours = rep.decode(magnitude).numpy()
    expected = librosa.griffinlim(magnitude.numpy(), n_iter=16, hop_length=64, n_fft=256, init=None)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-9 * np.abs(expected).max())


def test_griffin_lim_converges_as_well_as_librosa():
    wave = impacts(6, samples=8192, seed=1)
    rep = avgen.create("representation", "stft", griffin_lim_init="zero")
    magnitude = rep.encode(torch.from_numpy(wave))
    ours = spectral_convergence(magnitude.numpy(), rep.decode(magnitude).numpy())
    theirs = spectral_convergence(magnitude.numpy(), librosa.griffinlim(magnitude.numpy(), n_iter=32, init=None))
    # float32 rounding differs from numpy's and momentum amplifies it: allow 1 % per clip
    assert np.all(ours <= theirs * 1.01), (ours, theirs)
    assert ours.mean() <= theirs.mean() * 1.005, (ours, theirs)
    assert ours.mean() < 0.1  # Griffin-Lim actually converged (zero phase alone is ~1)
    # random starts differ between implementations: compare the averages over clips
    rep_random = avgen.create("representation", "stft", seed=3)
    ours_random = spectral_convergence(magnitude.numpy(), rep_random.decode(magnitude).numpy())
    theirs_random = spectral_convergence(
        magnitude.numpy(), librosa.griffinlim(magnitude.numpy(), n_iter=32, random_state=3)
    )
    assert ours_random.mean() <= theirs_random.mean() * 1.15, (ours_random, theirs_random)


def test_zero_and_random_phase_decode():
    wave = torch.from_numpy(impacts(2))
    rep = avgen.create("representation", "stft")
    magnitude = rep.encode(wave)
    zero = rep.decode(magnitude, phase="zero", length=wave.shape[-1])
    random = rep.decode(magnitude, phase="random", length=wave.shape[-1])
    expected_zero = librosa.istft(magnitude.numpy().astype(np.complex64), length=wave.shape[-1])
    np.testing.assert_allclose(zero.numpy(), expected_zero, atol=1e-5 * np.abs(expected_zero).max())
    assert torch.equal(random, rep.decode(magnitude, phase="random", length=wave.shape[-1]))  # seeded
    assert not torch.allclose(random, zero)


def test_gradcheck_encode_and_given_phase_decode():
    for backend in ["nnaudio", "torch"]:
        rep = avgen.create("representation", "stft", n_fft=32, hop_length=8, backend=backend).double()
        wave = torch.randn(1, 48, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(rep.encode, (wave,))
    rep = avgen.create("representation", "stft", n_fft=32, hop_length=8).double()
    reference = torch.randn(1, 48, dtype=torch.float64)
    magnitude = rep.encode(reference).detach().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda m: rep.decode(m, phase="given", reference=reference), (magnitude,))


def test_gradients_flow_through_griffin_lim_decode():
    rep = avgen.create("representation", "stft", n_fft=256, hop_length=64, n_iter=4)
    magnitude = rep.encode(torch.from_numpy(impacts(2, samples=2048))).requires_grad_(True)
    rep.decode(magnitude).pow(2).sum().backward()
    assert magnitude.grad is not None and torch.isfinite(magnitude.grad).all() and magnitude.grad.abs().sum() > 0


def test_resamples_when_the_input_rate_differs():
    t44 = torch.arange(22050, dtype=torch.float64) / 44100
    t22 = torch.arange(11025, dtype=torch.float64) / SR
    tone = lambda t: torch.sin(2 * torch.pi * 1000 * t) * torch.exp(-3 * t)  # noqa: E731
    rep = avgen.create("representation", "stft")
    from_44k = rep.encode(tone(t44).float()[None], sample_rate=44100)
    native = rep.encode(tone(t22).float()[None])
    assert from_44k.shape == native.shape
    inner = slice(2, -2)  # away from the clip edges, where the resampler's filter is truncated
    error = torch.linalg.norm(from_44k[..., inner] - native[..., inner]) / torch.linalg.norm(native[..., inner])
    assert error < 1e-2
    assert int(from_44k[0, :, 10].argmax()) == round(1000 * 2048 / SR)


def test_batch_equals_clip_by_clip_and_moves_dtype():
    wave = torch.from_numpy(impacts(3))
    rep = avgen.create("representation", "stft")
    batch = rep.encode(wave)
    for i in range(3):
        torch.testing.assert_close(batch[i : i + 1], rep.encode(wave[i : i + 1]), rtol=1e-5, atol=1e-4)
    zero_start = avgen.create("representation", "stft", griffin_lim_init="zero")
    decoded = zero_start.decode(batch)
    assert decoded.shape == (3, 512 * 21)
    torch.testing.assert_close(decoded[1:2], zero_start.decode(batch[1:2]), rtol=1e-3, atol=1e-4)
    assert rep.double().encode(wave).dtype == torch.float64  # buffers follow .to()/.double()


def test_user_errors_are_avgen_errors():
    rep = avgen.create("representation", "stft")
    with pytest.raises(AvgenError, match="phase"):
        rep.decode(torch.rand(1, 1025, 22), phase="minimum")
    with pytest.raises(AvgenError, match="reference"):
        rep.decode(torch.rand(1, 1025, 22), phase="given")
    with pytest.raises(AvgenError, match=r"\[B, T\]"):
        rep.encode(torch.zeros(11025))
    with pytest.raises(AvgenError, match="hop_length"):
        avgen.create("representation", "stft", hop_length=4096)
    with pytest.raises(AvgenError, match="window"):
        avgen.create("representation", "stft", window="no-such-window")
    with pytest.raises(AvgenError, match="unknown key"):
        avgen.create("representation", "stft", nfft=512)


@pytest.mark.parametrize("n", [1, 2, 255, 256, 400, 1024, 2048])
def test_the_hann_window_is_scipys_exactly(n):
    """make_window('hann') is computed without importing scipy.signal (start-up) and equals it bit for bit."""
    from scipy.signal import get_window

    from avgen_audio.fourier import make_window

    expected = torch.from_numpy(np.asarray(get_window("hann", n, fftbins=True), dtype=np.float64))
    assert torch.equal(make_window("hann", n, torch.float64), expected)
    assert torch.equal(make_window("hamming", n, torch.float64),
                       torch.from_numpy(np.asarray(get_window("hamming", n, fftbins=True), dtype=np.float64)))
