"""Exact cosine top-K retrieval over a large bank, chunked so memory stays bounded, the same on every machine.

Behind the ``exact`` index (``avgen_retrieval.index``), the default index of the exemplar sound
(paper Eq. 8): the query is the time-averaged s', the bank the time-averaged representations of
the training clips (``avgen.time_average``).

What "exact" and "deterministic" mean here: a bank row's score is the float64 cosine of the
query and the row as given, every sum taken in one fixed order (``fixed_order_sum``), so it is a
function of the inputs alone: the same on every CPU, BLAS kernel, thread count, GPU and chunk
size. Rows are ranked by that score, descending, ties to the lower bank index. The fast fp32 (or
bf16) matmul scan over unit rows only picks candidates; their scores are recomputed in float64,
and a per-query proof from the scan's rounding-error bound shows that no other row can reach the
k-th score. A query the proof cannot settle (more near-ties than the candidate list holds) is
searched again with a score threshold, so the answer never depends on how the matmul rounded.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

from avgen import fixed_order_sum

DEFAULT_MEMORY_BUDGET = 256 * 2**20  # bytes of scratch memory per chunk (scores + normalized bank rows)
MAX_CHUNK_ROWS = 4096  # bank rows per matmul: bigger blocks fall out of cache (3x slower at 65 536 rows, 1025-d)
RESCORE_BUDGET = 64 * 2**20  # bytes of float64 scratch per block of rescored candidates
DEFAULT_RERANK = 16  # candidates kept beyond k by the fp32 scan and rescored in float64
BF16_ROUNDING = 2.0**-8  # unit roundoff of bfloat16 (8 significant bits, round to nearest even)
FP32_ROUNDING = 2.0**-24
FP64_ROUNDING = 2.0**-53


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """float32 rows scaled to unit L2 norm (all-zero rows stay zero), the same on every machine.

    The norm is taken in float64 in a fixed order and each entry rounded once to float32, so a
    row and its copies (also scaled by a power of two) give bit-identical unit vectors.
    """
    x64 = x.to(torch.float64)
    norm = fixed_order_sum(x64 * x64).sqrt().unsqueeze(-1)
    return torch.where(norm > 0, x64 / norm.clamp_min(torch.finfo(torch.float64).tiny), 0.0).float()


def exact_cosine(query: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """float64 cosines [N, C] of query rows [N, D] with their candidate rows [N, C, D], summed in a fixed order.

    Products of float32 numbers are exact in float64, so the only roundings are those of the
    fixed-order sums, the square root and the division: the same on every machine. Zero rows score
    0; a NaN score becomes -inf (ranked last).
    """
    q = query.to(torch.float64)
    r = rows.to(torch.float64)
    dot = fixed_order_sum(r * q.unsqueeze(1))
    norms = fixed_order_sum(q * q).sqrt().unsqueeze(1) * fixed_order_sum(r * r).sqrt()
    cos = torch.where(norms > 0, dot / norms.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    return cos.nan_to_num(nan=-float("inf"))


def fp32_score_error(dim: int) -> float:
    """Bound on |fp32 matmul score of the ``l2_normalize`` rows - exact_cosine of the rows|, in any summation order.

    The dot product's roundings (at most dim in a row, whatever the order: gamma_dim) plus ``rescore_error``.
    """
    return dim * FP32_ROUNDING * 1.01 + rescore_error(dim)


def rescore_error(dim: int) -> float:
    """Bound on |exact dot of two l2_normalize rows - exact_cosine of the rows|: each unit entry within 2^-24, the float64 sums."""
    return 4 * FP32_ROUNDING * 1.01 + 4 * dim * FP64_ROUNDING


def chunk_size_for(num_queries: int, dim: int, memory_budget: int = DEFAULT_MEMORY_BUDGET, normalize: bool = True) -> int:
    """Bank rows per chunk so the score block [N, C] (and the normalized rows [C, D]) fit the budget."""
    bytes_per_row = 4 * num_queries + (12 * dim if normalize else 0)
    return max(1, min(MAX_CHUNK_ROWS, memory_budget // max(1, bytes_per_row)))


def topk_cosine(
    query: torch.Tensor,
    bank: torch.Tensor,
    k: int,
    chunk_size: int | None = None,
    *,
    bank_normalized: bool = False,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    rerank: int = DEFAULT_RERANK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact cosine top-K of each query row among the bank rows: (scores [N, k], indices [N, k]).

    Best first by the float64 score (module docstring), ties to the lower bank index; k is clipped
    to the bank size. The bank is scanned in chunks of ``chunk_size`` rows (default: from
    ``memory_budget``), one fp32 matmul each, keeping ``k + rerank`` candidates per query. Pass
    ``bank_normalized=True`` when the rows already are ``l2_normalize`` output to skip that step.
    """
    _check_shapes(query, bank)
    n, m = query.shape[0], bank.shape[0]
    k = min(int(k), m)
    if n == 0 or k <= 0:
        return _empty(n, k, query.device)
    if chunk_size is None:
        chunk_size = chunk_size_for(n, bank.shape[1], memory_budget, normalize=not bank_normalized)
    return _BankSearch(bank, chunk_size, bank_normalized).search(query, l2_normalize(query), k, rerank)


class _BankSearch:
    """The exact search over one bank: fp32 scan for candidates, float64 rescoring, proof, threshold rescan.

    ``bank`` is scanned (its rows made unit unless ``normalized``); ``source`` (default: the bank)
    holds the rows as given, which the float64 rescoring reads.
    """

    def __init__(self, bank: torch.Tensor, chunk_size: int, normalized: bool, source: torch.Tensor | None = None) -> None:
        self.bank, self.chunk_size, self.normalized = bank, max(1, int(chunk_size)), normalized
        self.source = bank if source is None else source

    def unit_chunks(self, device: torch.device) -> Iterator[tuple[int, torch.Tensor]]:
        for start, rows in _chunks(self.bank, self.chunk_size, device, torch.float32):
            yield start, rows if self.normalized else l2_normalize(rows)

    def rows(self, indices: torch.Tensor) -> torch.Tensor:
        """The source rows at ``indices`` (any shape) -> [*indices.shape, D], on the indices' device."""
        return self.source[indices.to(self.source.device)].to(indices.device)

    def search(self, query: torch.Tensor, q: torch.Tensor, k: int, rerank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k for the query rows [N, D] as given and ``q``, their ``l2_normalize`` output."""
        m = self.bank.shape[0]
        size = min(m, k + max(0, int(rerank)))
        if size == m:  # a small bank: every row is a candidate
            everything = torch.arange(m, device=q.device).expand(q.shape[0], m)
            scores, indices = rescore(query, everything, self.rows, k)
            return scores.float(), indices
        found = RunningCandidates(q.shape[0], size, q.device)
        with exact_matmul(q.device):
            for start, rows in self.unit_chunks(q.device):
                found.update(scan_scores(q, rows), start)
        scores, indices = rescore(query, found.indices, self.rows, k)
        # every row left out scored at most floor in fp32, so its float64 score is at most floor + error
        proven = found.floor.double() + fp32_score_error(q.shape[1]) < scores[:, k - 1]
        return self.settle(query, q, scores, indices, proven, k)

    def settle(self, query: torch.Tensor, q: torch.Tensor, scores: torch.Tensor, indices: torch.Tensor, proven: torch.Tensor,
               k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Search again every query whose candidates could not be proved complete; float32 scores out."""
        unproven = (~proven).nonzero().flatten().tolist()
        if unproven:
            # a row of the true top-k scores at least the candidates' k-th in float64, so at least that minus the error in fp32
            floors = scores[unproven, k - 1] - fp32_score_error(q.shape[1])
            for i, hits in zip(unproven, self.rows_above(q[unproven], floors)):
                scores[i], indices[i] = rescore(query[i : i + 1], hits.unsqueeze(0), self.rows, k)
        return scores.float(), indices

    def rows_above(self, q: torch.Tensor, floors: torch.Tensor) -> list[torch.Tensor]:
        """For each query row, the indices of the bank rows whose fp32 score reaches its floor (float64 [N])."""
        thresholds = torch.nextafter(floors.float(), torch.tensor(-float("inf"), device=floors.device)).unsqueeze(1)
        found: list[list[torch.Tensor]] = [[] for _ in range(q.shape[0])]
        with exact_matmul(q.device):
            for start, rows in self.unit_chunks(q.device):
                query_rows, columns = (scan_scores(q, rows) >= thresholds).nonzero(as_tuple=True)
                for i in query_rows.unique().tolist():
                    found[i].append(columns[query_rows == i] + start)
        return [torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long, device=q.device) for parts in found]


def scan_scores(q: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The scan's matmul [N, C]: any rounding within ``fp32_score_error`` (bf16: ``bf16_cosine_bound``) gives the same answer."""
    return q @ rows.T


def rescore(q: torch.Tensor, candidates: torch.Tensor, rows: Callable[[torch.Tensor], torch.Tensor],
            k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best candidates of each query by float64 ``exact_cosine``, ties to the lower index: (float64 scores, indices).

    ``candidates`` long [N, C] holds distinct bank indices per row (-1: no candidate, kept last with
    score -inf); ``rows(indices)`` gives those rows as given. Memory stays within ``RESCORE_BUDGET``
    (blocks of queries, then of candidates).
    """
    n, width = candidates.shape
    dim = q.shape[1]
    k = min(k, width)
    per_candidate = 24 * dim  # float64 rows, their products with the query, the first halving of the sums
    if width * per_candidate > RESCORE_BUDGET:  # many candidates (a threshold rescan): blocks of columns
        step = max(1, RESCORE_BUDGET // per_candidate)
        best_scores = torch.empty(n, 0, dtype=torch.float64, device=q.device)
        best = torch.empty(n, 0, dtype=torch.long, device=q.device)
        for start in range(0, width, step):
            part = candidates[:, start : start + step]
            scores, indices = rescore(q, part, rows, k)
            best_scores, best = _merge(torch.cat([best_scores, scores], 1), torch.cat([best, indices], 1), k)
        return best_scores, best
    block = max(1, RESCORE_BUDGET // max(1, width * per_candidate))
    present = candidates.clamp_min(0)
    scores = torch.cat([exact_cosine(q[i : i + block], rows(present[i : i + block]))
                        for i in range(0, n, block)]) if n else torch.empty(0, width, dtype=torch.float64)
    return _merge(scores.masked_fill(candidates < 0, -float("inf")), candidates, k)


class CosineIndex:
    """A bank normalized once and searched exactly; ``search`` returns what ``topk_cosine`` does.

    ``precision="bf16"`` adds a bfloat16 copy of the bank for a first pass (about 2x the fp32
    matmul rate on CPUs with AVX512-BF16/AMX) that keeps ``k + rerank`` candidates per query and
    rescores them in float64. A query's answer is kept only when the bf16 error bound proves that
    no other bank row can reach its k-th score; otherwise that query is searched again in fp32
    (``fallbacks`` counts them). Either way the answer is the exact, machine-independent one.
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
        self.source = bank  # the rows as given, rescored in float64 (kept by reference, not copied)
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
        n = query.shape[0]
        if n == 0 or k <= 0:
            return _empty(n, k, query.device)
        chunk = self.chunk_size or chunk_size_for(n, self.bank.shape[1], normalize=False)
        exact = _BankSearch(self.bank, chunk, normalized=True, source=self.source)
        query = query.to(self.bank.device)
        q = l2_normalize(query)
        if self.bank_bf16 is None or k + self.rerank >= len(self):
            return exact.search(query, q, k, DEFAULT_RERANK)
        scores, indices, proven = self._search_bf16(query, q, k, chunk, exact.rows)
        unproven = (~proven).nonzero().flatten()
        self.fallbacks = int(unproven.numel())
        scores = scores.float()
        if self.fallbacks:
            scores[unproven], indices[unproven] = exact.search(query[unproven], q[unproven], k, DEFAULT_RERANK)
        return scores, indices

    def _search_bf16(self, query: torch.Tensor, q: torch.Tensor, k: int, chunk: int,
                     fetch: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """bf16 pass + float64 rescoring of the candidates: (float64 scores, indices, proven [N] bool)."""
        approx = RunningCandidates(q.shape[0], k + self.rerank, q.device)
        q16 = q.bfloat16()
        with exact_matmul(q.device):
            for start, rows in _chunks(self.bank_bf16, chunk, q.device, torch.bfloat16):
                approx.update(scan_scores(q16, rows), start)
        scores, indices = rescore(query, approx.indices, fetch, k)
        query_rounding = (q - q16.float()).norm(dim=1) * 1.01
        # every row left out has a bf16 score <= approx.floor, so its cosine is at most bound
        bound = bf16_cosine_bound(approx.floor, query_rounding, self.bank_rounding, q.shape[1]).double()
        proven = bound + rescore_error(q.shape[1]) < scores[:, k - 1]
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
def exact_matmul(device: torch.device) -> Iterator[None]:
    """fp32 matmuls in full fp32 (no TF32 or bf16 shortcuts) and bf16 matmuls accumulated in fp32.

    The error bounds above assume both; a user's ``torch.set_float32_matmul_precision("medium")``
    or cuBLAS's reduced-precision bf16 reduction would break them.
    """
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    bf16_flag = torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction if device.type == "cuda" else None
    if bf16_flag is not None:
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)
        if bf16_flag is not None:
            torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = bf16_flag


def _merge(scores: torch.Tensor, indices: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the k best (score descending, then index ascending) of each row."""
    by_index = torch.argsort(indices, dim=1, stable=True)
    scores, indices = scores.gather(1, by_index), indices.gather(1, by_index)
    by_score = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return scores.gather(1, by_score), indices.gather(1, by_score)
