"""recall_at_k against a brute-force numpy reference, through the registered metric."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import avgen
from avgen import EvalContext
from avgen_retrieval.search import topk_cosine


def brute_force_recall(query: np.ndarray, bank: np.ndarray, train_labels: np.ndarray, test_labels: np.ndarray, k: int) -> float:
    """For each test row: rank every bank row by float64 cosine (ties to lower index), look at the first k.

    The dot products of the integer-valued rows are exact in float64 whatever the summation order, and
    dividing them by the norms afterwards keeps exact ties tied (normalizing first would round them apart).
    """
    query, bank = query.astype(np.float64), bank.astype(np.float64)
    norms = np.linalg.norm(query, axis=1, keepdims=True) * np.linalg.norm(bank, axis=1)
    hits = 0
    for i, row in enumerate((query @ bank.T) / norms):
        order = np.lexsort((np.arange(len(row)), -row))[:k]
        hits += int(np.any(train_labels[order] == test_labels[i]))
    return hits / len(query)


def make_context(tmp_path: Path, retrieved, train_labels, test_labels) -> EvalContext:
    n = len(test_labels)
    return EvalContext(
        run_dir=tmp_path, sample_rate=8000, class_names=["a", "b", "c"], test_ids=[str(i) for i in range(n)],
        test_labels=torch.as_tensor(test_labels), real_waves=torch.zeros(n, 10),
        train_labels=None if train_labels is None else torch.as_tensor(train_labels), retrieved=retrieved,
    )


@pytest.mark.parametrize("chunk_size", [3, 16, None])
def test_recall_matches_brute_force_with_ties_and_small_classes(tmp_path, chunk_size):
    rng = np.random.default_rng(0)
    # integer-valued (+-1) vectors give exact ties; class 2 has only 2 training clips (< K = 5, 10)
    bank = rng.choice([-1.0, 1.0], size=(40, 8)).astype(np.float32)
    bank[20:30] = bank[:10]  # exact duplicates
    train_labels = np.array([0] * 19 + [1] * 19 + [2] * 2)
    query = rng.choice([-1.0, 1.0], size=(25, 8)).astype(np.float32)
    test_labels = rng.integers(0, 3, size=25)
    _, retrieved = topk_cosine(torch.from_numpy(query), torch.from_numpy(bank), k=10, chunk_size=chunk_size)

    metric = avgen.create("metric", "recall_at_k", ks=[1, 2, 5, 10, 50], baselines=False)
    result = metric.compute(make_context(tmp_path, retrieved, train_labels, test_labels))
    assert set(result) == {"R@1", "R@2", "R@5", "R@10", "R@50"}
    for k in (1, 2, 5, 10):
        expected = brute_force_recall(query, bank, train_labels, test_labels, k)
        assert result[f"R@{k}"] == pytest.approx(expected, abs=1e-6)
    # K beyond the retrieved list uses all of it
    assert result["R@50"] == result["R@10"]
    assert 0.0 < result["R@1"] <= result["R@5"] <= result["R@10"] <= 1.0


def test_default_ks_and_known_values(tmp_path):
    retrieved = torch.tensor([[0, 1, 2] + [3] * 7, [2, 2, 1] + [0] * 7, [3] * 6 + [0] * 4])  # third clip: first hit at rank 7
    train_labels = [0, 1, 2, 1]
    test_labels = [1, 1, 0]
    result = avgen.create("metric", "recall_at_k", baselines=False).compute(make_context(tmp_path, retrieved, train_labels, test_labels))
    assert result == {"R@1": pytest.approx(0.0), "R@5": pytest.approx(2 / 3, abs=1e-6), "R@10": pytest.approx(1.0)}


def test_missing_retrieval_returns_empty(tmp_path):
    assert avgen.create("metric", "recall_at_k").compute(make_context(tmp_path, None, None, [0, 1])) == {}


def test_bad_params_and_bad_indices(tmp_path):
    with pytest.raises(avgen.AvgenError):
        avgen.create("metric", "recall_at_k", ks=[0])
    with pytest.raises(avgen.AvgenError, match="outside"):
        avgen.create("metric", "recall_at_k").compute(make_context(tmp_path, torch.tensor([[5]]), [0, 1], [0]))


def test_class_first_puts_the_predicted_class_first_ranked_by_cosine():
    """The class head's knowledge at retrieval: per query, the training clips of its predicted class nearest
    first (cosine, a hand-written reference), then the Eq. 8 retrieval's other clips in their order."""
    from avgen._core.generate import class_first

    gen = torch.Generator().manual_seed(3)
    bank, queries = torch.randn(8, 5, generator=gen), torch.randn(3, 5, generator=gen)
    labels, predicted = torch.tensor([0, 0, 1, 1, 1, 2, 2, 0]), torch.tensor([1, 2, 3])
    _, retrieved = topk_cosine(queries, bank, 4)
    out = class_first(None, bank, labels, queries, predicted, retrieved)
    cosine = torch.nn.functional.normalize(queries.double(), dim=1) @ torch.nn.functional.normalize(bank.double(), dim=1).T
    for q, c in enumerate(predicted.tolist()):
        mine = sorted(torch.nonzero(labels == c)[:, 0].tolist(), key=lambda j: -float(cosine[q, j]))
        expected = (mine + [j for j in retrieved[q].tolist() if j not in mine])[:4]
        assert out[q].tolist() == expected, (q, out[q], expected)
    assert out[2].tolist() == retrieved[2].tolist()  # class 3 has no training clip: Eq. 8's order stands


def test_a_run_reports_the_class_restricted_recall_apart(tiny_run: Path):
    import json

    metrics = json.loads((tiny_run / "metrics.json").read_text())["recall_at_k"]
    assert {"R@1", "R@1_by_class", "video_class_acc"} <= set(metrics)
    # the predicted class's nearest clip is of the right class exactly when the class head is right
    assert metrics["R@1_by_class"] == metrics["video_class_acc"]
