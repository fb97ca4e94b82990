"""The training-mean baseline the fit stage prints next to the val losses."""

from __future__ import annotations

import math

import pytest
import torch

import avgen
from avgen._core.baseline import baseline_losses, compare_line
from avgen._core.train import WeightedLoss
SHAPE = avgen.GeneratorShape(feature_dim=4, rep_dim=5, steps=3, num_classes=3)


def split(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"rep": torch.rand(n, 5, 3, generator=g) * 4, "label": torch.tensor([0, 0, 1, -1] * (n // 4)),
            "wave": torch.zeros(n, 8), "features": torch.zeros(n, 2, 4)}


def test_mean_predictor_is_the_training_mean_and_for_can_the_class_prior():
    train = split(8, 0)
    owens = avgen.create("generator", "owens_lstm", context={"shape": SHAPE})
    out = owens.mean_outputs(train, 3)
    assert set(out) == {"rep"} and out["rep"].shape == (3, 5, 3)
    torch.testing.assert_close(out["rep"][2], train["rep"].sum(0) / 8)
    can = avgen.create("generator", "can_lstm", context={"shape": SHAPE}).mean_outputs(train, 3)
    torch.testing.assert_close(can["rep"], out["rep"])
    # labels 0, 0, 1 twice (unlabelled -1 ignored): prior 2/3, 1/3, 0
    torch.testing.assert_close(can["probs"][0], torch.tensor([2 / 3, 1 / 3, 0.0]))


def test_baseline_scores_every_loss_that_can_score_the_mean_and_skips_the_rest():
    train, val = split(8, 0), split(4, 1)

    class NeedsWave(avgen.Loss):
        needs_wave = True

        def __call__(self, outputs, batch):  # pragma: no cover - must not be called
            raise AssertionError("a waveform loss was evaluated on the mean predictor")

    losses = [WeightedLoss("class_nll", 1.0, avgen.create("loss", "class_nll")),
              WeightedLoss("spec_smooth_l1", 50.0, avgen.create("loss", "spec_smooth_l1")),
              WeightedLoss("perceptual", 100.0, NeedsWave())]
    can = avgen.create("generator", "can_lstm", context={"shape": SHAPE})
    scores = baseline_losses(losses, can, train, val)
    assert set(scores) == {"class_nll", "spec_smooth_l1"}
    # by hand: smooth-L1 (beta 1) of the train mean against each val rep, and -log prior of the val labels
    mean = train["rep"].mean(0)
    diff = (val["rep"] - mean).abs()
    expected = torch.where(diff < 1, 0.5 * diff**2, diff - 0.5).mean().item()
    assert scores["spec_smooth_l1"] == pytest.approx(expected, rel=1e-6)
    assert scores["class_nll"] == pytest.approx(-(2 * math.log(2 / 3) + math.log(1 / 3)) / 3, rel=1e-6)
    # a generator without a class head: the class loss cannot score it and is left out
    owens = avgen.create("generator", "owens_lstm", context={"shape": SHAPE})
    assert set(baseline_losses(losses, owens, train, val)) == {"spec_smooth_l1"}


def test_compare_line_gives_both_numbers_and_the_change():
    line = compare_line({"total": 4.0, "spec_smooth_l1": 0.08}, {"spec_smooth_l1": 0.1}, epoch=7)
    assert line == "val at epoch 7: spec_smooth_l1 0.08 vs 0.1 for the training mean (-20.0 %)"
    assert compare_line({"total": 1.0}, {}, epoch=1) == ""
