"""Retrieval gives one answer whatever the matmul's rounding (CPU, BLAS kernel, chunk size, bf16 or not).

A CPU cannot be emulated by environment knobs, so these tests change the rounding themselves:
the scan's matmul is replaced by one that errs by up to the bound the proof assumes (the worst
any summation order can do), and the feature dimensions are permuted (which reorders every sum).
The answer must stay the exact one: float64 cosine of the unit rows, ties to the lower index.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import avgen_retrieval.search as retrieval
from avgen._core.retrieval import time_average
from avgen import fixed_order_sum
from avgen_retrieval.search import CosineIndex, exact_cosine, fp32_score_error, l2_normalize, topk_cosine


def tricky_bank(seed: int = 0, dim: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(bank, queries) full of exact ties and near-ties closer than fp32 can resolve."""
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=(30, dim))  # every cosine a multiple of 1/dim: exact ties
    clustered = rng.standard_normal((4, dim))[rng.integers(0, 4, 60)] + 0.05 * rng.standard_normal((60, dim))
    near = np.repeat(clustered[:5], 4, axis=0).astype(np.float32)  # each row 4 times, then nudged by one ulp
    near[1::4, 0] = np.nextafter(near[1::4, 0], np.float32(np.inf))
    near[2::4, 3] = np.nextafter(near[2::4, 3], np.float32(-np.inf))
    bank = np.concatenate([signs, clustered, near, signs[:10], 4.0 * signs[10:20], 0.5 * clustered[:10],
                           np.zeros((2, dim))]).astype(np.float32)
    # queries near (not on) the clusters: the one-ulp copies then differ to first order (~1e-9), far above
    # float64 rounding; a query parallel to a row would leave them within 1e-16, where no float64 sum can rank them
    queries = np.concatenate([signs[:6], clustered[:8] + 0.02 * rng.standard_normal((8, dim)),
                              rng.choice([-1.0, 1.0], size=(5, dim)), rng.standard_normal((4, dim))]).astype(np.float32)
    return bank, queries


def reference(query: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    """Brute force with correctly rounded sums (math.fsum): cosine of the rows as given, ordered by (score desc, index asc)."""
    q, b = query.astype(np.float64), bank.astype(np.float64)
    norms_q = [math.sqrt(math.fsum(row * row)) for row in q]
    norms_b = [math.sqrt(math.fsum(row * row)) for row in b]
    order = []
    for qi, nq in zip(q, norms_q):
        sims = np.array([math.fsum(qi * bj) / (nq * nb) if nq * nb > 0 else 0.0 for bj, nb in zip(b, norms_b)])
        order.append(np.lexsort((np.arange(len(sims)), -sims))[:k])
    return np.stack(order)


def worst_rounding(seed: int):
    """A scan matmul that errs by up to fp32_score_error(dim), as the worst summation order may."""
    g = torch.Generator().manual_seed(seed)

    def scores(q: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        exact = q.double() @ rows.double().T
        if q.dtype == torch.bfloat16:
            return exact.bfloat16()
        bound = q.shape[1] * retrieval.FP32_ROUNDING  # the dot product's own rounding, the rest is the rescoring's
        noise = (torch.rand(exact.shape, generator=g, dtype=torch.float64) * 2 - 1) * bound
        return (exact + noise).float()

    return scores


@pytest.mark.parametrize("k", [1, 5, 12])
def test_answer_is_the_float64_ranking_for_any_chunk_and_rerank(k):
    bank, query = tricky_bank()
    expected = reference(query, bank, k)
    for chunk in (1, 7, 64, None):
        for rerank in (0, 2, 16):
            _, idx = topk_cosine(torch.from_numpy(query), torch.from_numpy(bank), k, chunk, rerank=rerank)
            np.testing.assert_array_equal(idx.numpy(), expected, err_msg=f"chunk {chunk} rerank {rerank}")


@pytest.mark.parametrize("seed", range(4))
def test_same_answer_when_the_matmul_rounds_another_way(monkeypatch, seed):
    bank, query = tricky_bank(seed)
    expected = [topk_cosine(torch.from_numpy(query), torch.from_numpy(bank), k, 9)[1] for k in (1, 5)]
    monkeypatch.setattr(retrieval, "scan_scores", worst_rounding(seed))
    for k, want in zip((1, 5), expected):
        for chunk, rerank in ((9, 0), (9, 16), (50, 3)):
            _, idx = topk_cosine(torch.from_numpy(query), torch.from_numpy(bank), k, chunk, rerank=rerank)
            assert torch.equal(idx, want)
        for precision in ("fp32", "bf16"):
            _, idx = CosineIndex(torch.from_numpy(bank), precision=precision, chunk_size=16, rerank=4).search(torch.from_numpy(query), k)
            assert torch.equal(idx, want)


def test_same_answer_with_the_dimensions_permuted():
    # a permutation reorders every sum of the matmul, the norms and the rescoring; ties and near-ties stay
    bank, query = tricky_bank(5)
    for seed in range(3):
        perm = np.random.default_rng(seed).permutation(bank.shape[1])
        a = topk_cosine(torch.from_numpy(query), torch.from_numpy(bank), 8, 13)[1]
        b = topk_cosine(torch.from_numpy(query[:, perm].copy()), torch.from_numpy(bank[:, perm].copy()), 8, 13)[1]
        assert torch.equal(a, b)


def test_many_exact_ties_beyond_the_candidates_are_searched_again():
    # 300 copies of one row: the scan keeps k + rerank of them arbitrarily; the answer is the lowest indices
    rng = np.random.default_rng(3)
    row = rng.standard_normal(24).astype(np.float32)
    bank = np.concatenate([rng.standard_normal((50, 24)), np.tile(row, (300, 1)), rng.standard_normal((50, 24))]).astype(np.float32)
    query = (row + 1e-3 * rng.standard_normal(24)).astype(np.float32)[None]
    for chunk in (17, 128, None):
        _, idx = topk_cosine(torch.from_numpy(query), torch.from_numpy(bank), 5, chunk, rerank=2)
        assert idx[0].tolist() == [50, 51, 52, 53, 54]
    index = CosineIndex(torch.from_numpy(bank), precision="bf16", chunk_size=64, rerank=3)
    assert index.search(torch.from_numpy(query), 5)[1][0].tolist() == [50, 51, 52, 53, 54]


def test_near_ties_below_fp32_resolution_are_ordered_by_float64():
    # rows one ulp apart score within ~1e-8 of each other: the fp32 scan cannot order them, the float64 rescoring does
    rng = np.random.default_rng(14)
    base = (0.5 + rng.random(16)).astype(np.float32)
    bank = np.tile(base, (6, 1))
    for i, j in enumerate((3, 7, 11, 2, 9)):
        bank[i + 1, j] = np.nextafter(bank[i + 1, j], np.float32(np.inf))
    query = (0.5 + rng.random((3, 16))).astype(np.float32)
    _, idx = topk_cosine(torch.from_numpy(query), torch.from_numpy(bank), 6)
    np.testing.assert_array_equal(idx.numpy(), reference(query, bank, 6))
    assert len({tuple(row) for row in idx.tolist()}) > 1  # the order follows the query, not the index


def test_fp32_error_bound_holds_for_a_real_matmul():
    rng = np.random.default_rng(11)
    q = l2_normalize(torch.from_numpy(rng.standard_normal((40, 1025)).astype(np.float32)))
    b = l2_normalize(torch.from_numpy((1 + rng.random((500, 1025))).astype(np.float32)))  # positive, like spectra
    exact = exact_cosine(q, b.unsqueeze(0).expand(40, -1, -1))
    assert float((q @ b.T - exact).abs().max()) <= fp32_score_error(1025)
    raw = torch.from_numpy(rng.standard_normal((3, 1025)).astype(np.float32)) * 1e3  # rescoring reads the rows as given
    torch.testing.assert_close(exact_cosine(raw, raw.unsqueeze(0).expand(3, -1, -1) * 0.5), exact_cosine(l2_normalize(raw), l2_normalize(raw).expand(3, -1, -1)), atol=1e-7, rtol=0)


def test_fixed_order_sum_and_normalize_do_not_depend_on_batching():
    rng = np.random.default_rng(12)
    x = torch.from_numpy(rng.standard_normal((37, 1025)))
    whole = fixed_order_sum(x)
    assert all(torch.equal(fixed_order_sum(x[i : i + 5]), whole[i : i + 5]) for i in range(0, 37, 5))
    np.testing.assert_allclose(whole.numpy(), x.numpy().sum(axis=1), rtol=1e-12, atol=1e-12)
    rows = x.float()
    unit = l2_normalize(rows)
    assert torch.equal(l2_normalize(rows[3:4]), unit[3:4])
    assert torch.equal(l2_normalize(rows * 8), unit) and torch.equal(l2_normalize(rows * 0.25), unit)
    np.testing.assert_allclose(np.linalg.norm(unit.double().numpy(), axis=1), 1.0, atol=1e-6)
    assert torch.equal(l2_normalize(torch.zeros(2, 5)), torch.zeros(2, 5))


def test_time_average_is_the_same_in_any_block_size():
    reps = torch.from_numpy(np.random.default_rng(13).random((23, 40, 22)).astype(np.float32))
    whole = time_average(reps, rows_per_block=256)
    assert torch.equal(time_average(reps, rows_per_block=4), whole)
    np.testing.assert_allclose(whole.numpy(), reps.double().mean(dim=2).numpy(), rtol=1e-6)
