"""Exact cosine top-K retrieval against a brute-force numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avgen._core.retrieval import time_average
from avgen_retrieval.search import CosineIndex, RunningCandidates, bf16_cosine_bound, chunk_size_for, l2_normalize, topk_cosine


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
    assert rows * (100 * 4 + 50 * 12) <= 1_000_000  # scores, rows in float32 and their float64 norm
    assert chunk_size_for(1, 50, memory_budget=10) == 1
    # a budget that splits the bank unevenly still gives the exact answer
    rng = np.random.default_rng(3)
    q, b = rng.standard_normal((4, 8)).astype(np.float32), rng.standard_normal((57, 8)).astype(np.float32)
    _, idx = topk_cosine(torch.from_numpy(q), torch.from_numpy(b), k=5, memory_budget=4 * (4 + 8) * 10)
    np.testing.assert_array_equal(idx.numpy(), reference_topk(q.astype(np.float64), b.astype(np.float64), 5)[1])


def test_prenormalized_bank_gives_same_result():
    bank = torch.randn(40, 6)
    query = torch.randn(5, 6)
    normalized = l2_normalize(bank)
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


def clustered(rng: np.random.Generator, rows: int, dim: int, classes: int = 5) -> np.ndarray:
    """Rows around a few class centres, as time-averaged spectra of a few materials are."""
    centres = rng.standard_normal((classes, dim))
    return (centres[rng.integers(0, classes, rows)] + rng.standard_normal((rows, dim))).astype(np.float32)


def test_running_candidates_keep_the_highest_scores_and_a_true_floor():
    rng = np.random.default_rng(9)
    scores = rng.standard_normal((7, 1000)).astype(np.float32)
    scores[:, 600:610] = scores[:, :10]  # duplicates: either copy may be kept
    scores[3, 700:] = np.nan  # a NaN row must not stop the others
    kept = RunningCandidates(7, 12)
    for start in range(0, 1000, 128):  # chunks of 2 column groups, then a ragged one
        kept.update(torch.from_numpy(scores[:, start : start + 128]), start)
    for row in (0, 1, 2, 4, 5, 6):
        expected = np.sort(scores[row])[::-1][:12]
        got = scores[row, kept.indices[row].numpy()]
        np.testing.assert_array_equal(np.sort(got)[::-1], expected)  # the kept indices hold the 12 highest values
        np.testing.assert_array_equal(np.sort(kept.scores[row].numpy())[::-1], expected)
        assert len(set(kept.indices[row].tolist())) == 12
        assert kept.floor[row] == expected[-1]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("k", [1, 10])
def test_cosine_index_matches_brute_force(precision, k):
    rng = np.random.default_rng(5)
    bank, query = clustered(rng, 3000, 64), clustered(rng, 37, 64)
    index = CosineIndex(torch.from_numpy(bank), precision=precision, chunk_size=512, rerank=32)
    scores, indices = index.search(torch.from_numpy(query), k)
    ref_scores, ref_idx = reference_topk(query.astype(np.float64), bank.astype(np.float64), k)
    np.testing.assert_array_equal(indices.numpy(), ref_idx)
    np.testing.assert_allclose(scores.numpy(), ref_scores, atol=1e-5)
    if precision == "bf16":  # clustered data with spread-out scores: the bf16 pass proves most queries
        assert index.fallbacks < len(query) // 2


def test_cosine_index_bf16_falls_back_when_it_cannot_prove():
    # Positive vectors near one direction (like magnitude spectra): the top cosines differ by less
    # than bf16 can resolve, so every query goes back to fp32 and the answer is still exact.
    rng = np.random.default_rng(6)
    bank = (1.0 + 0.3 * rng.random((2000, 32))).astype(np.float32)
    query = (1.0 + 0.3 * rng.random((9, 32))).astype(np.float32)
    index = CosineIndex(torch.from_numpy(bank), precision="bf16", chunk_size=300, rerank=8)
    _, indices = index.search(torch.from_numpy(query), 5)
    assert index.fallbacks == len(query)
    np.testing.assert_array_equal(indices.numpy(), reference_topk(query.astype(np.float64), bank.astype(np.float64), 5)[1])


def test_cosine_index_bf16_exact_ties_go_to_lower_index():
    rng = np.random.default_rng(7)
    base = rng.choice([-1.0, 1.0], size=(40, 16))
    bank = np.concatenate([base, base[::-1], 3.0 * base[:10]]).astype(np.float32)
    query = base[:6].astype(np.float32)
    index = CosineIndex(torch.from_numpy(bank), precision="bf16", chunk_size=7, rerank=4)
    _, indices = index.search(torch.from_numpy(query), 6)
    np.testing.assert_array_equal(indices.numpy(), reference_topk(query.astype(np.float64), bank.astype(np.float64), 6)[1])


def test_bf16_bound_holds_for_every_pair():
    # the bound on the true cosine from a bf16 score, checked against float64 over all pairs
    rng = np.random.default_rng(8)
    q = torch.from_numpy(rng.standard_normal((50, 300))).float()
    b = torch.from_numpy(rng.standard_normal((2000, 300))).float()
    q, b = q / q.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    q16, b16 = q.bfloat16(), b.bfloat16()
    approx = (q16 @ b16.T).float()
    true = q.double() @ b.double().T
    q_round = (q - q16.float()).norm(dim=1, keepdim=True)
    b_round = float((b - b16.float()).norm(dim=1).max())
    bound = bf16_cosine_bound(approx, q_round, b_round, 300).double()
    assert bool((true <= bound).all())
    assert float((bound - true).max()) < 0.02  # and it is tight enough to prove anything


def test_cosine_index_prenormalized_and_small_banks():
    bank = torch.randn(30, 8)
    normalized = l2_normalize(bank)
    query = torch.randn(4, 8)
    expected = topk_cosine(query, bank, k=5)
    for index in (CosineIndex(normalized, normalized=True), CosineIndex(bank, precision="bf16", rerank=64)):
        scores, indices = index.search(query, 5)  # k + rerank >= bank size: plain fp32 scan
        assert torch.equal(indices, expected[1])
        torch.testing.assert_close(scores, expected[0])
    assert len(CosineIndex(bank)) == 30
    with pytest.raises(ValueError):
        CosineIndex(bank, precision="fp16")
