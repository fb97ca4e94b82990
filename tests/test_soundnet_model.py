"""SoundNet8 against a numpy re-implementation of the original layers, straight from the raw sound8.npy arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avgen._core.errors import AvgenError
from soundnet_support import converted_home, raw_layers

# The original SoundNet-8 table (Aytar et al. 2016; torch7 main_train.lua), written here independently of
# the plugin: name -> (kernel, stride, padding, max-pool size or 0, has batch norm).
TABLE = {
    "conv1": (64, 2, 32, 8, True),
    "conv2": (32, 2, 16, 8, True),
    "conv3": (16, 2, 8, 0, True),
    "conv4": (8, 2, 4, 0, True),
    "conv5": (4, 2, 2, 4, True),
    "conv6": (4, 2, 2, 0, True),
    "conv7": (4, 2, 2, 0, True),
}
HEADS = {"conv8": (8, 2, 0), "conv8_2": (8, 2, 0)}
EPS = 1e-5


def np_conv(x: np.ndarray, weights: np.ndarray, biases: np.ndarray, stride: int, padding: int) -> np.ndarray:
    """Cross-correlation of x [C_in, T] with TF-layout weights (k, 1, C_in, C_out): [C_out, T']."""
    x = np.pad(x, ((0, 0), (padding, padding)))
    k = weights.shape[0]
    windows = np.lib.stride_tricks.sliding_window_view(x, k, axis=1)[:, ::stride, :]  # [C_in, T', k]
    return np.einsum("ctk,kco->ot", windows, weights[:, 0].astype(np.float64), optimize=True) + biases[:, None]


def np_soundnet(wave: np.ndarray, layers: dict) -> dict[str, np.ndarray]:
    """Every layer's output for a waveform in [-1, 1], in float64."""
    x = (wave.astype(np.float64) * 256.0)[None]
    out = {}
    for name, (k, stride, padding, pool, _) in TABLE.items():
        p = layers[name]
        x = np_conv(x, p["weights"], p["biases"], stride, padding)
        x = (x - p["mean"][:, None]) / np.sqrt(p["var"][:, None] + EPS) * p["gamma"][:, None] + p["beta"][:, None]
        x = np.maximum(x, 0.0)
        if pool:
            steps = x.shape[1] // pool
            x = x[:, : steps * pool].reshape(x.shape[0], steps, pool).max(axis=2)
        out[name] = x
    for name, (k, stride, padding) in HEADS.items():
        out[name] = np_conv(out["conv7"], layers[name]["weights"], layers[name]["biases"], stride, padding)
    return out


@pytest.fixture(scope="module")
def model():
    from avgen_soundnet import load_soundnet8

    return load_soundnet8(converted_home() / "weights" / "soundnet8.safetensors")


def test_every_layer_matches_numpy_from_the_raw_arrays(model):
    rng = np.random.default_rng(0)
    # 10 s of band-limited noise: long enough for one conv8 step; varied enough that ReLUs are not all zero
    wave = np.convolve(rng.standard_normal(220500), np.ones(8) / 8, mode="same").astype(np.float32) * 0.3
    expected = np_soundnet(wave, raw_layers())
    with torch.no_grad():
        got = model(torch.from_numpy(wave)[None], tuple(expected))
    for name, ref in expected.items():
        ours = got[name][0].double().numpy()
        assert ours.shape == ref.shape, name
        active = ref.std() > 0 if name in HEADS else (ref > 0).mean() > 0.05  # ReLU layers: not all zero
        assert active, f"{name}: reference output is degenerate"
        scale = np.abs(ref).max()
        np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-4 * scale, err_msg=name)


def test_half_second_clip_gives_one_conv7_step_of_1024(model):
    features = model.features(torch.zeros(3, 11025), "conv7")
    assert features.shape == (3, 1024, 1)


def test_weights_are_frozen_and_batch_norm_stays_in_eval(model):
    model.train()
    assert not model.training and not model.conv3.bn.training
    assert not any(p.requires_grad for p in model.parameters())
    x = torch.randn(2, 11025) * 0.1
    with torch.no_grad():
        first = model.features(x, "conv7")
        again = model.features(x[:1], "conv7")  # batch statistics would make clip 0 depend on clip 1
    torch.testing.assert_close(first[:1], again, rtol=1e-5, atol=1e-5)


def test_object_and_scene_names_come_with_the_weights(model):
    assert len(model.object_names) == 1000 and len(model.place_names) == 401
    assert model.object_names[0].startswith("tench") and "music_studio" in model.place_names


def test_min_samples_is_the_shortest_input_that_works(model):
    from avgen_soundnet import LAYER_NAMES, min_samples

    for layer in LAYER_NAMES:
        n = min_samples(layer)
        assert model(torch.zeros(1, n), (layer,))[layer].shape[-1] == 1
        with pytest.raises(AvgenError, match="too short"):
            model(torch.zeros(1, n - 1), (layer,))


def test_unknown_layer_is_a_one_line_error(model):
    with pytest.raises(AvgenError, match="conv9.*conv1, conv2"):
        model(torch.zeros(1, 11025), ("conv9",))
