"""The exemplar retrieval's keys and index (paper Eq. 8): ``time_average`` and the recipe's ``[index]``.

A bank row is the time-averaged representation of a clip (``time_average``); the nearest rows of a
query (the time-averaged s') come from an index component (``avgen.Index``, kind ``index``) that a
plugin registers. The recipe's ``[index]`` section names it; without one the core builds ``exact``,
the exact, machine-independent cosine search of the retrieval plugin. The core never imports the
index's plugin: it finds the component through the registry.
"""

from __future__ import annotations

from typing import Any

import torch

from avgen._core.errors import AvgenError

DEFAULT_INDEX = "exact"  # the index the core builds when the recipe has no [index] section


def fixed_order_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over the last dim in one fixed pairwise order (halves added elementwise): [..., D] -> [...].

    Elementwise IEEE additions in a fixed order round the same way on every machine, unlike a
    reduction kernel whose order follows the vector width and thread count.
    """
    if x.shape[-1] == 0:
        return x.new_zeros(x.shape[:-1])
    while x.shape[-1] > 1:
        half = x.shape[-1] // 2
        summed = x[..., :half] + x[..., half : 2 * half]
        if x.shape[-1] % 2:  # an odd count: the last term joins the first pair
            summed[..., 0] += x[..., -1]
        x = summed
    return x[..., 0]


def time_average(reps: torch.Tensor, rows_per_block: int | None = None) -> torch.Tensor:
    """[N, D, F] -> float32 [N, D]: the mean over frames (the averaged spectrum of paper Eq. 8), the same on every machine.

    Summed in float64 in a fixed order, ``rows_per_block`` clips at a time (default: 32 MiB of float64).
    """
    if reps.dim() != 3:
        raise ValueError(f"time_average expects [N, D, F], got shape {tuple(reps.shape)}")
    out = torch.empty(reps.shape[:2], dtype=torch.float32, device=reps.device)
    frames = max(1, reps.shape[2])
    rows_per_block = rows_per_block or max(1, 2**22 // max(1, reps.shape[1] * frames))
    for start in range(0, reps.shape[0], rows_per_block):
        block = reps[start : start + rows_per_block].to(torch.float64)
        out[start : start + block.shape[0]] = (fixed_order_sum(block) / frames).float()
    return out


def build_index(spec: Any, bank: torch.Tensor) -> Any:
    """The index component a recipe's ``[index]`` section names (``spec``, a ``ComponentSpec``; None: ``exact``),
    built over the bank rows [M, D]: an ``avgen.Index`` whose ``search(query, k)`` gives the nearest rows."""
    from avgen._core.plugins import get_component

    name, params = (DEFAULT_INDEX, None) if spec is None else (spec.name, spec.params)
    return get_component("index", name).build(params).build(bank)


def search(index: Any, query: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``index.search(query, k)``, refused in one line when a query got no bank row at all (an approximate index
    may leave slots empty, index -1; the first one holds the exemplar)."""
    scores, indices = index.search(query, k)
    empty = int((indices[:, :1] < 0).sum())
    if empty:
        raise AvgenError(f"the retrieval index ({type(index).__name__}) found no bank row for {empty} of "
                         f"{indices.shape[0]} queries; let it search more (e.g. faiss's nprobe) or use the exact index")
    return scores, indices
