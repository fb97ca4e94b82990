"""The 'cochleagram' representation: ERB band layout, tones, shapes, decode, gradients."""

from __future__ import annotations

import functools

import librosa
import numpy as np
import pytest
import torch

import avgen
from avgen import AvgenError

SR = 22050


@functools.lru_cache(maxsize=None)
def cochleagram(**params):
    """One instance per parameter set for the module (building the STFT kernels and band filters is most of
    each test's time; encode and decode do not change the instance). Tests that change dtype build their own."""
    return avgen.create("representation", "cochleagram", **params)


def erb_number(hz: np.ndarray) -> np.ndarray:
    """Glasberg & Moore (1990) ERB-rate scale, written out independently."""
    return 21.4 * np.log10(4.37e-3 * hz + 1.0)


def tone(hz: float, samples: int = 11025) -> torch.Tensor:
    return torch.sin(2 * torch.pi * hz * torch.arange(samples) / SR)[None]


def test_band_centres_are_erb_spaced_between_the_limits():
    rep = avgen.create("representation", "cochleagram", low_hz=50.0, high_hz=8000.0)
    centres = rep.centre_hz.double().numpy()
    assert len(centres) == 42 and rep.dim == 42
    assert centres[0] == pytest.approx(50.0, rel=1e-5) and centres[-1] == pytest.approx(8000.0, rel=1e-5)
    steps = np.diff(erb_number(centres))
    np.testing.assert_allclose(steps, steps.mean(), rtol=1e-4)  # equal steps on the ERB scale
    assert np.all(np.diff(centres) > 0)


def test_default_limits_and_power_complementary_filters():
    rep = cochleagram()
    assert rep.low_hz == 20.0 and rep.high_hz == 10000.0
    assert torch.allclose(rep.band_power.sum(0), torch.ones(1025), atol=1e-5)  # squares sum to one
    assert (rep.band_power.sum(1) > 0).all()  # every band sees some STFT bins
    low_rate = avgen.create("representation", "cochleagram", sample_rate=8000)
    assert low_rate.high_hz == 4000.0


@pytest.mark.parametrize("band", [8, 15, 22, 30, 38])
@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.7])
def test_a_pure_tone_excites_the_nearest_band(band, fraction):
    rep = cochleagram(compression="none")
    centres = rep.centre_hz.double().numpy()
    erb = erb_number(centres[band]) + fraction * (erb_number(centres[band + 1]) - erb_number(centres[band]))
    hz = (10 ** (erb / 21.4) - 1) / 4.37e-3
    envelope = rep.encode(tone(hz))[0, :, 5:-5].mean(-1)
    nearest = int(np.argmin(np.abs(centres - hz)))
    assert int(envelope.argmax()) == nearest


def test_shape_and_batch():
    rep = cochleagram()
    wave = torch.randn(3, 11025)
    coch = rep.encode(wave)
    assert coch.shape == (3, 42, 22) and rep.frames(11025) == 22
    torch.testing.assert_close(coch[1:2], rep.encode(wave[1:2]), rtol=1e-4, atol=1e-5)
    assert rep.encode(torch.randn(2, 80000), sample_rate=8000).shape == (2, 42, rep.frames(round(80000 * SR / 8000)))


def test_encode_is_band_energy_of_the_stft_compressed():
    """Independent numpy version: sqrt(sum_k H_b(k)^2 |X_k|^2) ** 0.3 with cosine ERB bands."""
    rep = cochleagram()
    wave = torch.randn(2, 11025)
    magnitude = np.abs(librosa.stft(wave.numpy().astype(np.float64))).transpose(0, 2, 1)  # [B, F, K]
    bins = erb_number(np.arange(1025) * SR / 2048)
    centres = np.linspace(erb_number(20.0), erb_number(10000.0), 42)
    offset = (bins[None] - centres[:, None]) / (centres[1] - centres[0])
    offset[0] = np.maximum(offset[0], 0)
    offset[-1] = np.minimum(offset[-1], 0)
    response = np.where(np.abs(offset) < 1, np.cos(np.pi / 2 * offset), 0.0)
    expected = np.sqrt(np.einsum("bk,nfk->nbf", response**2, magnitude**2)) ** 0.3
    np.testing.assert_allclose(rep.encode(wave).numpy(), expected, rtol=2e-4, atol=1e-6)


def test_decode_gives_a_waveform_whose_cochleagram_is_close():
    rng = np.random.default_rng(0)
    t = np.arange(11025) / SR
    wave = np.stack([np.exp(-20 * t) * np.sin(2 * np.pi * f * t) + 0.05 * rng.standard_normal(11025) * np.exp(-40 * t)
                     for f in (300.0, 1200.0)]).astype(np.float32)
    rep = cochleagram()
    coch = rep.encode(torch.from_numpy(wave))
    decoded = rep.decode(coch, length=11025)
    assert decoded.shape == (2, 11025)
    again = rep.encode(decoded)
    convergence = torch.linalg.norm(again - coch) / torch.linalg.norm(coch)
    assert convergence < 0.3  # documented in docs/representations.md (about 0.2 on impact sounds)
    pinv_only = avgen.create("representation", "cochleagram", inverse_iter=0)
    worse = torch.linalg.norm(pinv_only.encode(pinv_only.decode(coch, length=11025)) - coch) / torch.linalg.norm(coch)
    assert convergence < worse  # the NNLS refinement helps


def test_gradcheck_encode_and_decode():
    rep = avgen.create("representation", "cochleagram", n_fft=64, hop_length=16, n_bands=8, high_hz=8000.0, inverse_iter=3).double()
    wave = torch.randn(1, 64, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(rep.encode, (wave,))
    reference = torch.randn(1, 64, dtype=torch.float64)
    coch = rep.encode(reference).detach().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda c: rep.decode(c, phase="given", reference=reference), (coch,))


def test_bad_band_limits_are_avgen_errors():
    with pytest.raises(AvgenError, match="high_hz"):
        avgen.create("representation", "cochleagram", sample_rate=8000, high_hz=6000.0)
