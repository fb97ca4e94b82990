"""Exact cosine top-K retrieval against a brute-force numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avgen.retrieval import chunk_size_for, time_average, topk_cosine


def reference_topk(query: np.ndarray, bank: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Float64 cosine, every pair, ordered by (score descending, index ascending)."""
    qn = query / np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
    bn = bank / np.maximum(np.linalg.norm(bank, axis=1, keepdims=True), 1e-12)
    sims = qn @ bn.T
    k = min(k, bank.shape[0])
    idx = np.empty((query.shape[0], k), dtype=np.int64)
    for i, row in enumerate(sims):
        order = np.lexsort((np.arange(len(row)), -row))  # last key is primary
        idx[i] = order[:k]
    return np.take_along_axis(sims, idx, axis=1), idx


@pytest.mark.parametrize("chunk_size", [None, 1, 7, 33, 1000])
def test_random_matches_brute_force(chunk_size):
    rng = np.random.default_rng(0)
    query = rng.standard_normal((13, 24)).astype(np.float32)
    bank = rng.standard_normal((101, 24)).astype(np.float32)
    scores, indices = topk_cosine(torch.from_numpy(query), torch.from_numpy(bank), k=10, chunk_size=chunk_size)
    ref_scores, ref_idx = reference_topk(query.astype(np.float64), bank.astype(np.float64), 10)
    assert scores.shape == (13, 10) and indices.dtype == torch.long
    np.testing.assert_allclose(scores.numpy(), ref_scores, atol=1e-5)
    np.testing.assert_array_equal(indices.numpy(), ref_idx)


@pytest.mark.parametrize("chunk_size", [None, 1, 2, 5, 6, 17])
def test_exact_ties_go_to_lower_index(chunk_size):
    # Entries +-1 over 16 dims: normalized values are +-0.25, every cosine is an exact multiple
    # of 1/16, so many scores tie exactly in float32 whatever the summation order.
    rng = np.random.default_rng(1)
    base = rng.choice([-1.0, 1.0], size=(6, 16))
    bank = np.concatenate([base, base[::-1], base[:3], 2.0 * base[:2]]).astype(np.float32)  # duplicates and scaled copies
    query = np.concatenate([base[:4], rng.choice([-1.0, 1.0], size=(5, 16))]).astype(np.float32)
    scores, indices = topk_cosine(torch.from_numpy(query), torch.from_numpy(bank), k=8, chunk_size=chunk_size)
    ref_scores, ref_idx = reference_topk(query.astype(np.float64), bank.astype(np.float64), 8)
    np.testing.assert_array_equal(indices.numpy(), ref_idx)
    np.testing.assert_allclose(scores.numpy(), ref_scores, atol=1e-6)
    # the query equal to base[0] finds all of its copies first, lowest index first
    assert indices[0, :4].tolist() == [0, 11, 12, 15]  # base[0] sits at 0, 11 (reversed copy), 12 and 15 (scaled copy)


def test_k_larger_than_bank_is_clipped():
    query = torch.randn(3, 5)
    bank = torch.randn(4, 5)
    scores, indices = topk_cosine(query, bank, k=10, chunk_size=3)
    assert scores.shape == (3, 4)
    assert sorted(indices[0].tolist()) == [0, 1, 2, 3]
    assert torch.all(scores[:, :-1] >= scores[:, 1:])


def test_zero_rows_score_zero():
    query = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    bank = torch.tensor([[0.0, 0.0], [-1.0, 0.0], [1.0, 1.0]])
    scores, indices = topk_cosine(query, bank, k=3)
    assert indices[0].tolist() == [2, 0, 1]
    assert scores[1].tolist() == [0.0, 0.0, 0.0] and indices[1].tolist() == [0, 1, 2]


def test_chunk_size_from_memory_budget_bounds_the_block():
    rows = chunk_size_for(num_queries=100, dim=50, memory_budget=1_000_000)
    assert rows * (100 * 4 + 50 * 4) <= 1_000_000
    assert chunk_size_for(1, 50, memory_budget=10) == 1
    # a budget that splits the bank unevenly still gives the exact answer
    rng = np.random.default_rng(3)
    q, b = rng.standard_normal((4, 8)).astype(np.float32), rng.standard_normal((57, 8)).astype(np.float32)
    _, idx = topk_cosine(torch.from_numpy(q), torch.from_numpy(b), k=5, memory_budget=4 * (4 + 8) * 10)
    np.testing.assert_array_equal(idx.numpy(), reference_topk(q.astype(np.float64), b.astype(np.float64), 5)[1])


def test_prenormalized_bank_gives_same_result():
    bank = torch.randn(40, 6)
    query = torch.randn(5, 6)
    normalized = bank / bank.norm(dim=1, keepdim=True)
    a = topk_cosine(query, bank, k=5, chunk_size=9)
    b = topk_cosine(query, normalized, k=5, chunk_size=9, bank_normalized=True)
    torch.testing.assert_close(a[0], b[0])
    assert torch.equal(a[1], b[1])


def test_time_average_is_mean_over_frames():
    reps = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    expected = np.arange(24, dtype=np.float64).reshape(2, 3, 4).mean(axis=2)
    np.testing.assert_allclose(time_average(reps).numpy(), expected)
    with pytest.raises(ValueError):
        time_average(torch.zeros(2, 3))
