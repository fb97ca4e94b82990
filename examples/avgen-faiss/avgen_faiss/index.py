"""A faiss index over L2-normalised rows, searched by inner product (= cosine): the ``faiss`` index component.

faiss finds ``k + rerank`` candidates; avgen's float64 rescoring orders them (ties to the lower
index), so the order never depends on faiss's kernels. For ``flat`` the answer is avgen's exact one.
The rescoring and the exact search come from avgen's ``exact`` index, made through
``avgen.create("index", "exact")`` (its ``rescore`` and ``scan_error``), never by importing its plugin.
"""

from __future__ import annotations

import math
from typing import Literal

import faiss
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

import avgen
from avgen import Index

ADD_CHUNK = 65536  # rows normalised and added at a time, so the bank is never copied whole


class FaissParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: Literal["ivf_flat", "hnsw", "flat"] = Field(
        default="ivf_flat", description="ivf_flat: k-means cells, scan nprobe of them; hnsw: graph; flat: exact scan")
    nlist: int = Field(default=0, ge=0, description="ivf_flat cells (0: 4 sqrt(bank rows), at most rows / 39 so k-means has 39 rows a cell)")
    nprobe: int = Field(default=32, ge=1, description="ivf_flat cells scanned per query (more: higher recall, slower)")
    train_per_list: int = Field(default=40, ge=1, description="ivf_flat k-means training rows per cell (a random sample)")
    hnsw_m: int = Field(default=32, ge=2, description="hnsw links per node")
    ef_construction: int = Field(default=80, ge=1, description="hnsw candidate list size while building")
    ef_search: int = Field(default=128, ge=1, description="hnsw candidate list size while searching (>= k)")
    rerank: int = Field(default=16, ge=0, le=4096, description="extra faiss candidates rescored in float64 per query")
    threads: int = Field(default=0, ge=0, description="faiss OpenMP threads (0: faiss's default)")
    seed: int = Field(default=0, description="seed of the training sample and of k-means")


class FaissIndex(Index):
    """A faiss index: ``build(bank)``, then ``search(queries, k)`` -> (cosine scores [N, k], bank indices [N, k]) as
    torch tensors."""

    def __init__(self, params: FaissParams | None = None) -> None:
        self.params = params or FaissParams()
        self.index: faiss.Index | None = None
        self.bank, self.size, self.exact = torch.zeros(0, 0), 0, None

    def __len__(self) -> int:
        return self.size

    def build(self, bank: torch.Tensor) -> "FaissIndex":
        """Index the rows of ``bank`` [M, D] for cosine search."""
        self.index = _faiss_index(bank, self.params)
        self.bank, self.size = bank, bank.shape[0]
        self.exact = avgen.create("index", "exact").build(bank)  # avgen's float64 rescoring and exact search
        return self

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Best first by avgen's float64 cosine, ties to the lower index; -1 (score -inf) where the
        probed cells held fewer than k rows."""
        k = min(int(k), self.size)
        if self.params.threads:
            faiss.omp_set_num_threads(self.params.threads)
        queries = queries.detach().cpu()
        approx, found = self.index.search(_normalized_numpy(queries), min(self.size, k + self.params.rerank))
        found = torch.from_numpy(found).long()
        scores, indices = self.exact.rescore(queries, found, k)
        if self.params.index == "flat" and found.shape[1] < self.size:  # prove it exact, as avgen's own scan does
            # faiss normalises in fp32 (norm error up to dim/2 ulps): twice avgen's bound covers its scores
            floor = torch.from_numpy(approx[:, -1]).double()
            unproven = (floor + 2 * self.exact.scan_error() >= scores[:, k - 1]).nonzero().flatten()
            if unproven.numel():
                exact_scores, exact_indices = self.exact.search(queries[unproven], k)
                scores[unproven], indices[unproven] = exact_scores.double(), exact_indices
        return scores.float().masked_fill(indices < 0, -math.inf), indices


def build_index(bank: torch.Tensor, params: FaissParams | None = None, **settings) -> FaissIndex:
    """Index the rows of ``bank`` [M, D] for cosine search (``settings`` are FaissParams fields)."""
    params = FaissParams(**{**(params.model_dump() if params is not None else {}), **settings})
    return FaissIndex(params).build(bank)


def _faiss_index(bank: torch.Tensor, params: FaissParams) -> faiss.Index:
    """A faiss index of the unit rows of ``bank``, made as ``params`` say."""
    if bank.dim() != 2 or bank.shape[0] == 0:
        raise ValueError(f"build_index expects a non-empty bank [M, D], got shape {tuple(bank.shape)}")
    if params.threads:
        faiss.omp_set_num_threads(params.threads)
    rows, dim = bank.shape
    if params.index == "flat":
        index = faiss.IndexFlatIP(dim)
    elif params.index == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params.ef_construction
        index.hnsw.efSearch = params.ef_search
    else:
        nlist = min(params.nlist or max(1, min(round(4 * math.sqrt(rows)), rows // 39)), rows)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = params.seed
        sample = np.random.default_rng(params.seed).choice(rows, min(rows, nlist * params.train_per_list), replace=False)
        index.train(_normalized_numpy(bank[torch.from_numpy(np.sort(sample))]))
        index.nprobe = min(params.nprobe, nlist)
    for start in range(0, rows, ADD_CHUNK):
        index.add(_normalized_numpy(bank[start : start + ADD_CHUNK]))
    return index


def _normalized_numpy(x: torch.Tensor) -> np.ndarray:
    """A float32 C-contiguous copy with unit-norm rows (all-zero rows stay zero)."""
    out = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy(), dtype=np.float32).copy()
    faiss.normalize_L2(out)
    return out
