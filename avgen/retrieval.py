"""Exact cosine top-K retrieval over a large bank, chunked so memory stays bounded.

Used for the exemplar sound (paper Eq. 8): the query is the time-averaged s', the bank the
time-averaged representations of the training clips. ``topk_cosine`` is one call;
``CosineIndex`` normalizes the bank once for repeated searches and can take a bfloat16
first pass whose answers are proved exact (or recomputed in fp32).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

DEFAULT_MEMORY_BUDGET = 256 * 2**20  # bytes of scratch memory per chunk (scores + normalized bank rows)
MAX_CHUNK_ROWS = 4096  # bank rows per matmul: bigger blocks fall out of cache (3x slower at 65 536 rows, 1025-d)
BF16_ROUNDING = 2.0**-8  # unit roundoff of bfloat16 (8 significant bits, round to nearest even)
FP32_ROUNDING = 2.0**-24


def time_average(reps: torch.Tensor) -> torch.Tensor:
    """[N, D, F] -> [N, D]: the mean over frames (the averaged spectrum of paper Eq. 8)."""
    if reps.dim() != 3:
        raise ValueError(f"time_average expects [N, D, F], got shape {tuple(reps.shape)}")
    return reps.float().mean(dim=2)


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Rows scaled to unit L2 norm (all-zero rows stay zero, so their cosine is 0)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(eps)


def chunk_size_for(num_queries: int, dim: int, memory_budget: int = DEFAULT_MEMORY_BUDGET, normalize: bool = True) -> int:
    """Bank rows per chunk so the score block [N, C] (and the normalized rows [C, D]) fit the budget."""
    bytes_per_row = 4 * num_queries + (4 * dim if normalize else 0)
    return max(1, min(MAX_CHUNK_ROWS, memory_budget // max(1, bytes_per_row)))


def topk_cosine(
    query: torch.Tensor,
    bank: torch.Tensor,
    k: int,
    chunk_size: int | None = None,
    *,
    bank_normalized: bool = False,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact cosine top-K of each query row among the bank rows: (scores [N, k], indices [N, k]).

    Best first; ties go to the lower bank index; k is clipped to the bank size. The bank is
    scanned in chunks of ``chunk_size`` rows (default: from ``memory_budget``), one matmul each.
    Pass ``bank_normalized=True`` when the bank rows already have unit norm to skip that copy.
    """
    _check_shapes(query, bank)
    n, m = query.shape[0], bank.shape[0]
    k = min(int(k), m)
    if n == 0 or k <= 0:
        return _empty(n, k, query.device)
    if chunk_size is None:
        chunk_size = chunk_size_for(n, bank.shape[1], memory_budget, normalize=not bank_normalized)
    best = RunningTopK(n, k, query.device)
    q = l2_normalize(query.float())
    for start, rows in _chunks(bank, chunk_size, query.device, torch.float32):
        best.update(q @ (rows if bank_normalized else l2_normalize(rows)).T, start)
    return best.scores, best.indices


class CosineIndex:
    """A bank normalized once and searched exactly; ``search`` returns what ``topk_cosine`` does.

    ``precision="bf16"`` adds a bfloat16 copy of the bank for a first pass (about 2x the fp32
    matmul rate on CPUs with AVX512-BF16/AMX) that keeps ``k + rerank`` candidates per query and
    rescores them in fp32. A query's answer is kept only when the bf16 error bound proves that no
    other bank row can reach its k-th score; otherwise that query is searched again in fp32
    (``fallbacks`` counts them). The rescoring sums in another order than the scan, so two cosines
    within fp32 rounding (~1e-7) of each other may come out in the other order.
    """

    def __init__(
        self,
        bank: torch.Tensor,
        *,
        precision: str = "fp32",
        normalized: bool = False,
        chunk_size: int | None = None,
        rerank: int = 64,
    ) -> None:
        if bank.dim() != 2:
            raise ValueError(f"CosineIndex expects a bank [M, D], got shape {tuple(bank.shape)}")
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"CosineIndex precision must be 'fp32' or 'bf16', got {precision!r}")
        self.precision, self.chunk_size, self.rerank = precision, chunk_size, max(0, int(rerank))
        self.bank = bank.float() if normalized else _normalized_copy(bank)
        self.bank_bf16: torch.Tensor | None = None
        self.bank_rounding = 0.0  # largest ||b - bf16(b)|| over the bank rows
        if precision == "bf16":
            self.bank_bf16, self.bank_rounding = _bf16_copy(self.bank)
        self.fallbacks = 0  # queries of the last search() that the bf16 pass could not prove

    def __len__(self) -> int:
        return self.bank.shape[0]

    def search(self, query: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact cosine top-K: (scores [N, k], indices [N, k]), best first, ties to the lower index."""
        _check_shapes(query, self.bank)
        self.fallbacks = 0
        k = min(int(k), len(self))
        n, chunk = query.shape[0], self.chunk_size or chunk_size_for(query.shape[0], self.bank.shape[1], normalize=False)
        if self.bank_bf16 is None or n == 0 or k <= 0 or k + self.rerank >= len(self):
            return topk_cosine(query, self.bank, k, chunk, bank_normalized=True)
        q = l2_normalize(query.to(self.bank.device, torch.float32))
        scores, indices, proven = self._search_bf16(q, k, chunk)
        unproven = (~proven).nonzero().flatten()
        self.fallbacks = int(unproven.numel())
        if self.fallbacks:
            scores[unproven], indices[unproven] = topk_cosine(q[unproven], self.bank, k, chunk, bank_normalized=True)
        return scores, indices

    def _search_bf16(self, q: torch.Tensor, k: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """bf16 pass + fp32 rescoring of the candidates: (scores, indices, proven [N] bool)."""
        approx = RunningCandidates(q.shape[0], k + self.rerank, q.device)
        q16 = q.bfloat16()
        with _fp32_accumulation(q.device):
            for start, rows in _chunks(self.bank_bf16, chunk, q.device, torch.bfloat16):
                approx.update(q16 @ rows.T, start)
        candidates = approx.indices
        exact = torch.cat([torch.bmm(self.bank[c], qi.unsqueeze(2)).squeeze(2)
                           for c, qi in zip(candidates.split(64), q.split(64))])
        scores, indices = _merge(exact, candidates, k)
        query_rounding = (q - q16.float()).norm(dim=1) * 1.01
        # every row left out has a bf16 score <= approx.floor, so its true cosine is at most bound
        bound = bf16_cosine_bound(approx.floor, query_rounding, self.bank_rounding, q.shape[1])
        # proven: each of them scores below the k-th best, whatever the fp32 summation order
        proven = scores[:, k - 1] - 2 * _summation_error(q.shape[1]) > bound
        return scores, indices, proven


class RunningCandidates:
    """The ``size`` highest scores of each query row, in no order (ties broken arbitrarily), fed chunk by chunk.

    ``floor`` [N] is the lowest kept score: every row not kept scored at most that.
    """

    GROUP = 64  # columns per group whose maximum is checked against the floor before any top-k

    def __init__(self, num_queries: int, size: int, device: torch.device | str = "cpu") -> None:
        self.size = size
        self.scores = torch.empty(num_queries, 0, device=device)
        self.indices = torch.empty(num_queries, 0, dtype=torch.long, device=device)
        self.floor = torch.full((num_queries,), -float("inf"), device=device)

    def update(self, chunk_scores: torch.Tensor, offset: int) -> None:
        """Merge the scores [N, C] of bank rows offset..offset+C-1."""
        n, width = chunk_scores.shape
        if self.scores.shape[1] < self.size:  # still filling up: every row takes its chunk top-k
            rows, columns = torch.arange(n, device=chunk_scores.device), None
            values = chunk_scores
        elif width % self.GROUP:
            rows, columns = (~(chunk_scores.amax(dim=1).float() <= self.floor)).nonzero().flatten(), None  # NaN too
            values = chunk_scores[rows]
        else:
            rows, columns = self._groups_above_floor(chunk_scores)
            values = chunk_scores[rows.unsqueeze(1), columns]
        if not rows.numel():
            return
        top_scores, top = torch.topk(values, min(self.size, values.shape[1]), dim=1, sorted=False)
        top_indices = (top if columns is None else columns.gather(1, top)) + offset
        scores = torch.cat([self.scores[rows], top_scores.float()], dim=1)
        indices = torch.cat([self.indices[rows], top_indices], dim=1)
        if scores.shape[1] > self.size:
            scores, keep = torch.topk(scores, self.size, dim=1, sorted=False)
            indices = indices.gather(1, keep)
        if scores.shape[1] == self.scores.shape[1]:
            self.scores[rows], self.indices[rows] = scores, indices
        else:  # filling up: every row grows together
            self.scores, self.indices = scores, indices
        if self.scores.shape[1] == self.size:
            self.floor[rows] = scores.amin(dim=1)

    def _groups_above_floor(self, chunk_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows with a score above their floor, the columns of their groups that hold one [R, G * GROUP]).

        One cheap max per group of columns spares the top-k the columns that cannot enter.
        """
        n, width = chunk_scores.shape
        groups = width // self.GROUP  # group j holds columns j, j + groups, j + 2 groups, ... (a fast strided max)
        group_max = chunk_scores.view(n, self.GROUP, groups).amax(dim=1).float()
        above = ~(group_max <= self.floor.unsqueeze(1))  # NaN too
        counts = above.sum(dim=1)
        rows = counts.nonzero().flatten()
        if not rows.numel():
            return rows, torch.empty(0, 0, dtype=torch.long, device=chunk_scores.device)
        chosen = torch.topk(above[rows].float(), int(counts[rows].max()), dim=1).indices  # every group above, padded
        steps = torch.arange(self.GROUP, device=chunk_scores.device) * groups
        return rows, (chosen.unsqueeze(2) + steps).reshape(rows.numel(), -1)


def bf16_cosine_bound(approx: torch.Tensor, query_rounding: torch.Tensor | float, bank_rounding: float, dim: int) -> torch.Tensor:
    """Upper bound on the true cosine of unit vectors q, b whose bf16 matmul score is at most ``approx``.

    ``query_rounding`` = ||q - bf16(q)||, ``bank_rounding`` = ||b - bf16(b)||. The bf16 products
    are summed in fp32 and the sum rounded once to bf16 (round to nearest).
    """
    before_rounding = torch.where(approx >= 0, approx / (1 - BF16_ROUNDING), approx / (1 + BF16_ROUNDING))
    input_error = query_rounding + bank_rounding + query_rounding * bank_rounding  # |q.b - bf16(q).bf16(b)|
    return before_rounding + _summation_error(dim) + input_error


def _summation_error(dim: int) -> float:
    """Bound on the fp32 rounding of a dot product of two unit vectors of ``dim`` entries."""
    return dim * FP32_ROUNDING * 1.01


class RunningTopK:
    """The k best (score descending, index ascending) of each query row, fed chunk by chunk in index order."""

    def __init__(self, num_queries: int, k: int, device: torch.device | str = "cpu") -> None:
        self.k = k
        self.scores = torch.empty(num_queries, 0, device=device)
        self.indices = torch.empty(num_queries, 0, dtype=torch.long, device=device)

    def update(self, chunk_scores: torch.Tensor, offset: int) -> None:
        """Merge the scores [N, C] of bank rows offset..offset+C-1 (after every earlier row)."""
        if self.scores.shape[1] < self.k:
            self.scores, self.indices = self._merged(chunk_scores.float(), offset)
            return
        # a later row enters only with a score above the k-th best: a tie goes to the earlier, lower index
        rows = (~(chunk_scores.amax(dim=1) <= self.scores[:, -1])).nonzero().flatten()  # NaN rows too
        if rows.numel():
            self.scores[rows], self.indices[rows] = self._merged(chunk_scores[rows].float(), offset, rows)

    def _merged(self, chunk_scores: torch.Tensor, offset: int, rows: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        best_scores = self.scores if rows is None else self.scores[rows]
        best_indices = self.indices if rows is None else self.indices[rows]
        top_scores, top_indices = _chunk_topk(chunk_scores, self.k)
        return _merge(torch.cat([best_scores, top_scores], dim=1), torch.cat([best_indices, top_indices + offset], dim=1), self.k)


def _check_shapes(query: torch.Tensor, bank: torch.Tensor) -> None:
    if query.dim() != 2 or bank.dim() != 2 or query.shape[1] != bank.shape[1]:
        raise ValueError(f"cosine search expects query [N, D] and bank [M, D], got {tuple(query.shape)} and {tuple(bank.shape)}")


def _empty(n: int, k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(n, max(k, 0), device=device), torch.zeros(n, max(k, 0), dtype=torch.long, device=device)


def _chunks(bank: torch.Tensor, chunk_size: int, device: torch.device, dtype: torch.dtype) -> Iterator[tuple[int, torch.Tensor]]:
    """(start, rows) of consecutive bank chunks, moved to the device and dtype."""
    chunk_size = max(1, int(chunk_size))
    for start in range(0, bank.shape[0], chunk_size):
        yield start, bank[start : start + chunk_size].to(device=device, dtype=dtype)


def _normalized_copy(bank: torch.Tensor) -> torch.Tensor:
    """A float32 copy of the bank with unit-norm rows, filled chunk by chunk."""
    out = torch.empty(bank.shape, dtype=torch.float32, device=bank.device)
    for start, rows in _chunks(bank, MAX_CHUNK_ROWS, bank.device, torch.float32):
        out[start : start + rows.shape[0]] = l2_normalize(rows)
    return out


def _bf16_copy(bank: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(bfloat16 copy of the bank, largest row norm of its rounding error)."""
    out = torch.empty(bank.shape, dtype=torch.bfloat16, device=bank.device)
    worst = 0.0
    for start, rows in _chunks(bank, MAX_CHUNK_ROWS, bank.device, torch.float32):
        rounded = rows.bfloat16()
        out[start : start + rows.shape[0]] = rounded
        worst = max(worst, float((rows - rounded.float()).norm(dim=1).max()))
    return out, worst * 1.01


@contextlib.contextmanager
def _fp32_accumulation(device: torch.device) -> Iterator[None]:
    """bf16 matmuls accumulate in fp32 (cuBLAS may otherwise reduce in bf16, which the error bound excludes)."""
    if device.type != "cuda":
        yield
        return
    flag = torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = flag


def _chunk_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of each row of one chunk, taking the lowest indices among ties at the k-th value."""
    width = scores.shape[1]
    k = min(k, width)
    # one extra candidate tells whether entries tied with the k-th value were left out
    values, indices = torch.topk(scores, min(k + 1, width), dim=1)
    if values.shape[1] > k:
        tied_rows = (values[:, k] == values[:, k - 1]).nonzero().flatten()
        values, indices = values[:, :k], indices[:, :k]
    else:
        tied_rows = torch.zeros(0, dtype=torch.long)
    if tied_rows.numel():  # topk may pick any of the tied entries: redo those rows exactly
        sub = scores[tied_rows]
        order = torch.sort(sub, dim=1, descending=True, stable=True).indices[:, :k]
        values[tied_rows] = sub.gather(1, order)
        indices[tied_rows] = order
    return values, indices


def _merge(scores: torch.Tensor, indices: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the k best (score descending, then index ascending) of each row."""
    by_index = torch.argsort(indices, dim=1, stable=True)
    scores, indices = scores.gather(1, by_index), indices.gather(1, by_index)
    by_score = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return scores.gather(1, by_score), indices.gather(1, by_score)
