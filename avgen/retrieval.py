"""Exact cosine top-K retrieval over a large bank, chunked so memory stays bounded.

Used for the exemplar sound (paper Eq. 8): the query is the time-averaged s', the bank the
time-averaged representations of the training clips.
"""

from __future__ import annotations

import torch

DEFAULT_MEMORY_BUDGET = 256 * 2**20  # bytes of scratch memory per chunk (scores + normalized bank rows)


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
    return max(1, memory_budget // max(1, bytes_per_row))


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
    if query.dim() != 2 or bank.dim() != 2 or query.shape[1] != bank.shape[1]:
        raise ValueError(f"topk_cosine expects query [N, D] and bank [M, D], got {tuple(query.shape)} and {tuple(bank.shape)}")
    n, m = query.shape[0], bank.shape[0]
    k = min(int(k), m)
    device = query.device
    if n == 0 or k <= 0:
        return torch.zeros(n, max(k, 0), device=device), torch.zeros(n, max(k, 0), dtype=torch.long, device=device)
    if chunk_size is None:
        chunk_size = chunk_size_for(n, bank.shape[1], memory_budget, normalize=not bank_normalized)
    chunk_size = max(1, int(chunk_size))
    q = l2_normalize(query.float())

    best_scores = torch.empty(n, 0, device=device)
    best_indices = torch.empty(n, 0, dtype=torch.long, device=device)
    for start in range(0, m, chunk_size):
        rows = bank[start : start + chunk_size].to(device=device, dtype=torch.float32)
        if not bank_normalized:
            rows = l2_normalize(rows)
        scores = q @ rows.T  # [N, C]
        chunk_scores, chunk_indices = _chunk_topk(scores, k)
        best_scores, best_indices = _merge(
            torch.cat([best_scores, chunk_scores], dim=1),
            torch.cat([best_indices, chunk_indices + start], dim=1),
            k,
        )
    return best_scores, best_indices


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
