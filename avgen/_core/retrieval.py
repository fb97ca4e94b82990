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


def index_component(spec: Any) -> Any:
    """The registered index component a recipe's ``[index]`` section names (``spec``; None: ``exact``)."""
    from avgen._core.plugins import get_component

    return get_component("index", DEFAULT_INDEX if spec is None else spec.name)


def build_index(spec: Any, bank: torch.Tensor) -> Any:
    """The index component a recipe's ``[index]`` section names (``spec``, a ``ComponentSpec``; None: ``exact``),
    built over the bank rows [M, D]: an ``avgen.Index`` whose ``search(query, k)`` gives the nearest rows."""
    from avgen._core.components import check_contract

    component = index_component(spec)
    built = component.build(None if spec is None else spec.params).build(bank)
    if built is None:
        raise AvgenError(f"plugin '{component.plugin}': index '{component.name}': build(bank) returned None; "
                         "expected the index itself (end build with `return self`)")
    return check_contract("index", built, component.name, component.plugin)


def checked_search(result: Any, queries: int, k: int, who: str, rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """What an index's ``search`` of ``queries`` rows for ``k`` gave, checked against ``avgen.Index.search``: two
    tensors, scores float [N, k'] and indices integer [N, k'] with 1 <= k' <= k, in [-1, ``rows``) when the bank's
    size is known. Else one AvgenError starting with ``who`` (the plugin and the component)."""
    if not isinstance(result, (tuple, list)) or len(result) != 2 or not all(isinstance(t, torch.Tensor) for t in result):
        got = f"a {type(result).__name__} of {len(result)}" if isinstance(result, (tuple, list)) else type(result).__name__
        raise AvgenError(f"{who}: search returned {got}; expected a tuple (scores, indices) of two tensors [N, k]")
    scores, indices = result
    if indices.dtype == torch.bool or indices.is_floating_point() or indices.is_complex():
        swapped = " (search returns (scores, indices), in that order)" if scores.dtype not in (torch.bool,) and \
            not scores.is_floating_point() and not scores.is_complex() else ""
        raise AvgenError(f"{who}: search gave indices {_described(indices)}; expected integer indices [N, k] into the "
                         f"bank{swapped}")
    if not scores.is_floating_point():
        raise AvgenError(f"{who}: search gave scores {_described(scores)}; expected float scores [N, k] (the cosines)")
    if indices.dim() != 2 or indices.shape[0] != queries or not 1 <= indices.shape[1] <= k or scores.shape != indices.shape:
        raise AvgenError(f"{who}: search gave scores {_described(scores)} and indices {_described(indices)} for "
                         f"{queries} queries and k = {k}; expected both [N, k'] = [{queries}, k'] with 1 <= k' <= {k}")
    if rows is not None and indices.numel() and not (-1 <= int(indices.min()) and int(indices.max()) < rows):
        raise AvgenError(f"{who}: search gave indices from {int(indices.min())} to {int(indices.max())} for a bank of "
                         f"{rows} rows; expected indices in [-1, {rows}) (-1: an empty slot)")
    return scores, indices


def _described(tensor: torch.Tensor) -> str:
    """'float32 [2, 1]': a tensor's dtype and shape, for an error."""
    return f"{str(tensor.dtype).removeprefix('torch.')} {list(tensor.shape)}"


def search(index: Any, query: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``index.search(query, k)``, checked (``checked_search``), and refused in one line when a query got no bank row
    at all (an approximate index may leave slots empty, index -1; the first one holds the exemplar)."""
    scores, indices = checked_search(index.search(query, k), query.shape[0], k,
                                     f"the retrieval index ({type(index).__name__})")
    empty = int((indices[:, :1] < 0).sum())
    if empty:
        raise AvgenError(f"the retrieval index ({type(index).__name__}) found no bank row for {empty} of "
                         f"{indices.shape[0]} queries; let it search more (e.g. faiss's nprobe) or use the exact index")
    return scores, indices
