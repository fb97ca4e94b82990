"""The sound_classifier metric on real, distinct synthesized audio (tones, noise bursts, rumbles)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import avgen
from avgen import EvalContext
from avgen_eval.classifier import confusion_matrix

CLASSES = ["low tone", "high tone", "noise burst", "rumble"]


def synth_clip(label: int, rng: np.random.Generator, rate: int, seconds: float) -> np.ndarray:
    """One impact-like sound of the class, at a random onset, level and pitch, over faint noise."""
    n = int(rate * seconds)
    t = np.arange(n) / rate
    onset = rng.uniform(0.0, 0.3 * seconds)
    local = np.clip(t - onset, 0.0, None)
    envelope = np.where(t >= onset, np.exp(-local / rng.uniform(0.03, 0.08)), 0.0)
    jitter = rng.uniform(0.95, 1.05)
    phase = rng.uniform(0, 2 * np.pi)
    if label == 0:
        sound = np.sin(2 * np.pi * 300 * jitter * local + phase)
    elif label == 1:
        sound = np.sin(2 * np.pi * 1800 * jitter * local + phase)
    elif label == 2:
        sound = rng.standard_normal(n)
    else:  # low-passed noise: a 24-sample moving average of white noise
        sound = 4.0 * np.convolve(rng.standard_normal(n), np.ones(24) / 24, mode="same")
    wave = rng.uniform(0.1, 1.0) * envelope * sound + 0.005 * rng.standard_normal(n)
    return wave.astype(np.float32)


def synth_set(per_class: int, seed: int, rate: int, seconds: float, classes: int = len(CLASSES)) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    waves = np.stack([synth_clip(int(c), rng, rate, seconds) for c in labels])
    return torch.from_numpy(waves), torch.from_numpy(labels)


def context(tmp_path, train, test, generated, dataset_hash="synthetic-tones-v1", rate=8000):
    return EvalContext(
        run_dir=tmp_path / "run", sample_rate=rate, class_names=CLASSES, test_ids=[str(i) for i in range(len(test[1]))],
        test_labels=test[1], real_waves=test[0], train_labels=train[1],
        train_waves=train[0] if callable(train[0]) else lambda: train[0],
        generated=generated, extra={"dataset_hash": dataset_hash},
    )


SMALL = dict(channels=[16, 32, 32, 64, 64], epochs=8, batch_size=16)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def test_classifier_well_above_chance_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("AVGEN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("AVGEN_CACHE", raising=False)
    rate, seconds = 8000, 0.25
    train, test = synth_set(30, 0, rate, seconds), synth_set(10, 1, rate, seconds)
    noisy = test[0] + 0.02 * torch.randn(test[0].shape, generator=torch.Generator().manual_seed(2))
    silence = 0.005 * torch.randn(test[0].shape, generator=torch.Generator().manual_seed(3))
    metric = avgen.create("metric", "sound_classifier", **SMALL)

    result = metric.compute(context(tmp_path, train, test, {"raw": noisy, "exemplar": silence}))
    assert set(result) == {"acc_real", "acc_raw", "acc_exemplar"}
    assert result["acc_real"] >= 0.8, result  # chance is 0.25
    assert result["acc_raw"] >= 0.7, result
    assert result["acc_exemplar"] <= 0.5, result  # background noise carries no class

    figures = tmp_path / "run" / "figures"
    for kind in ("real", "raw", "exemplar"):
        assert (figures / f"confusion_{kind}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    per_class = json.loads((figures / "classifier_per_class.json").read_text())
    assert per_class["class_names"] == CLASSES
    cm = np.array(per_class["confusion"]["real"])
    assert cm.sum() == 40 and np.trace(cm) / 40 == pytest.approx(result["acc_real"], abs=1e-6)
    for j, name in enumerate(CLASSES):
        assert per_class["per_class_accuracy"]["real"][name] == pytest.approx(cm[j, j] / cm[j].sum(), abs=1e-6)

    cached = list((tmp_path / "home" / "cache" / "classifier").glob("*.safetensors"))
    assert len(cached) == 1

    def no_training_waves():  # the cached classifier needs none; asking for them means it would train again
        raise AssertionError("the cached classifier was not used: the training waves were asked for")

    again = avgen.create("metric", "sound_classifier", **SMALL).compute(
        context(tmp_path, (no_training_waves, train[1]), test, {"raw": noisy, "exemplar": silence}))
    assert again == result  # the same weights on the same clips, on this machine


def test_real_only_when_nothing_generated(tmp_path, monkeypatch):
    monkeypatch.setenv("AVGEN_HOME", str(tmp_path / "home"))
    train, test = synth_set(8, 4, 8000, 0.125), synth_set(3, 5, 8000, 0.125)
    params = dict(SMALL, epochs=1, cache=False)
    result = avgen.create("metric", "sound_classifier", **params).compute(context(tmp_path, train, test, {}))
    assert list(result) == ["acc_real"]
    assert not (tmp_path / "home" / "cache" / "classifier").exists()


def test_confusion_matrix_matches_numpy():
    rng = np.random.default_rng(0)
    true, pred = rng.integers(-1, 5, 200), rng.integers(0, 5, 200)
    expected = np.zeros((5, 5), dtype=np.int64)
    for t, p in zip(true, pred):
        if t >= 0:
            expected[t, p] += 1
    np.testing.assert_array_equal(confusion_matrix(torch.from_numpy(true), torch.from_numpy(pred), 5).numpy(), expected)


@pytest.mark.slow
def test_default_classifier_on_half_second_clips(tmp_path, monkeypatch):
    """The default settings on GHD-like clips (22 050 Hz, 0.5 s)."""
    monkeypatch.setenv("AVGEN_HOME", str(tmp_path / "home"))
    train, test = synth_set(60, 10, 22050, 0.5), synth_set(20, 11, 22050, 0.5)
    result = avgen.create("metric", "sound_classifier").compute(context(tmp_path, train, test, {}, rate=22050))
    assert result["acc_real"] >= 0.9, result
