"""The reference baselines of recall_at_k against independent numpy / exact-fraction references."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

import avgen
from avgen import EvalContext
from avgen._core.retrieval import time_average
from avgen_retrieval.baselines import chance_recall

CLASSES = 4


def exact_chance(train_labels: np.ndarray, test_labels: np.ndarray, k: int) -> float:
    """Mean over test clips of 1 - C(M - m_c, k) / C(M, k), in exact fractions."""
    m = len(train_labels)
    total = Fraction(0)
    for label in test_labels:
        same = int((train_labels == label).sum())
        total += 1 - Fraction(math.comb(m - same, k), math.comb(m, k))
    return float(total / len(test_labels))


def numpy_recall(query: np.ndarray, bank: np.ndarray, train_labels: np.ndarray, test_labels: np.ndarray, k: int) -> float:
    """Rank every bank row by float64 cosine (ties to the lower index) and look at the first k."""
    query, bank = query.astype(np.float64), bank.astype(np.float64)
    scores = (query @ bank.T) / (np.linalg.norm(query, axis=1, keepdims=True) * np.linalg.norm(bank, axis=1))
    hits = 0
    for i, row in enumerate(scores):
        order = np.lexsort((np.arange(len(row)), -row))[:k]
        hits += int(np.any(train_labels[order] == test_labels[i]))
    return hits / len(scores)


@pytest.fixture(scope="module")
def split() -> dict[str, np.ndarray]:
    """Class-dependent frame features and spectrograms with noise, so that no baseline is trivially 0 or 1."""
    rng = np.random.default_rng(3)
    colours, spectra = rng.normal(size=(CLASSES, 12)), rng.gamma(2.0, size=(CLASSES, 20, 1))
    def make(n):
        labels = rng.integers(0, CLASSES, size=n)
        features = colours[labels][:, None, :] + 1.5 * rng.normal(size=(n, 3, 12))
        reps = spectra[labels] * rng.uniform(0.5, 1.5, size=(n, 1, 6)) + rng.gamma(1.0, size=(n, 20, 6))
        return labels, features.astype(np.float32), reps.astype(np.float32)
    out = {}
    for name, n in (("train", 60), ("test", 30)):
        out[f"{name}_labels"], out[f"{name}_features"], out[f"{name}_reps"] = make(n)
    return out


def context(tmp_path: Path, s: dict[str, np.ndarray], retrieved=None, predicted=None) -> EvalContext:
    train_reps = torch.from_numpy(s["train_reps"])
    return EvalContext(
        run_dir=tmp_path, sample_rate=8000, class_names=[str(c) for c in range(CLASSES)],
        test_ids=[str(i) for i in range(len(s["test_labels"]))], test_labels=torch.from_numpy(s["test_labels"]),
        real_waves=torch.zeros(len(s["test_labels"]), 8), real_reps=torch.from_numpy(s["test_reps"]),
        train_labels=torch.from_numpy(s["train_labels"]), train_bank=lambda: time_average(train_reps),
        test_features=torch.from_numpy(s["test_features"]), train_features=lambda: torch.from_numpy(s["train_features"]),
        retrieved=retrieved, predicted_labels=predicted,
    )


def test_baselines_match_independent_references(split, tmp_path):
    s = split
    result = avgen.create("metric", "recall_at_k", ks=[1, 5]).compute(context(tmp_path, s))
    assert set(result) == {f"{b}.R@{k}" for b in ("chance", "visual_nn", "train_mean", "oracle") for k in (1, 5)}
    train_avg = s["train_reps"].astype(np.float64).mean(axis=2)
    for k in (1, 5):
        assert result[f"chance.R@{k}"] == pytest.approx(exact_chance(s["train_labels"], s["test_labels"], k), abs=1e-6)
        visual = numpy_recall(s["test_features"].mean(axis=1), s["train_features"].mean(axis=1), s["train_labels"], s["test_labels"], k)
        assert result[f"visual_nn.R@{k}"] == pytest.approx(visual, abs=1e-6)
        oracle = numpy_recall(s["test_reps"].mean(axis=2), train_avg, s["train_labels"], s["test_labels"], k)
        assert result[f"oracle.R@{k}"] == pytest.approx(oracle, abs=1e-6)
        mean_query = np.repeat(train_avg.mean(axis=0, keepdims=True), len(s["test_labels"]), axis=0)
        assert result[f"train_mean.R@{k}"] == pytest.approx(
            numpy_recall(mean_query, train_avg, s["train_labels"], s["test_labels"], k), abs=1e-6)
    # the data carry the class in both the frames and the sound: the informed baselines beat chance
    assert result["visual_nn.R@1"] > result["chance.R@1"] + 0.2 and result["oracle.R@1"] > result["chance.R@1"] + 0.2


def test_chance_by_hand_and_capped_at_the_retrieval_depth():
    train, test = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 1])
    # class 0 (3 of 4) is hit by one draw with 3/4, class 1 with 1/4; two draws: 1 and 1 - (3/4)(2/3) = 1/2
    assert chance_recall(train, test, [1, 2]) == {"R@1": 0.5, "R@2": 0.75}
    assert chance_recall(train, test, [1, 2, 10], depth=1) == {"R@1": 0.5, "R@2": 0.5, "R@10": 0.5}
    assert chance_recall(torch.tensor([0, -1]), torch.tensor([0]), [1]) == {"R@1": 0.5}  # unlabelled clips never hit


def test_run_values_video_class_accuracy_and_depth(split, tmp_path):
    s = split
    n = len(s["test_labels"])
    retrieved = torch.zeros(n, 3, dtype=torch.long)
    predicted = torch.from_numpy(s["test_labels"]).clone()
    predicted[: n // 3] = (predicted[: n // 3] + 1) % CLASSES
    result = avgen.create("metric", "recall_at_k", ks=[1, 10]).compute(context(tmp_path, s, retrieved, predicted))
    assert result["video_class_acc"] == pytest.approx(1 - (n // 3) / n, abs=1e-6)
    # the run retrieved 3 clips, so every baseline's R@10 is cut at 3 as the run's is
    assert result["chance.R@10"] == pytest.approx(exact_chance(s["train_labels"], s["test_labels"], 3), abs=1e-6)
    assert result["R@10"] == result["R@1"] == pytest.approx(float((s["train_labels"][0] == s["test_labels"]).mean()), abs=1e-6)
    off = avgen.create("metric", "recall_at_k", ks=[1], baselines=False).compute(context(tmp_path, s, retrieved))
    assert set(off) == {"R@1"}


def test_a_run_without_features_or_representation_gets_the_baselines_it_can(split, tmp_path):
    """No encoder: no visual_nn; no representation (real_reps None): no train_mean or oracle, and the bank is never read."""
    s = split

    def no_bank():
        raise AssertionError("the bank of a run without a representation must not be read")

    ctx = context(tmp_path, s)
    ctx.test_features, ctx.train_features, ctx.real_reps, ctx.train_bank = None, None, None, no_bank
    result = avgen.create("metric", "recall_at_k", ks=[1]).compute(ctx)
    assert set(result) == {"chance.R@1"}


def test_frame_average_in_blocks_equals_the_whole(split):
    from avgen_retrieval.baselines import _frame_average

    features = torch.from_numpy(split["train_features"])
    whole = _frame_average(features, rows=10_000)
    assert torch.equal(_frame_average(features, rows=7), whole)
    assert torch.allclose(whole.double(), features.double().mean(1), rtol=1e-6, atol=1e-6)
