"""The ``exact`` index: avgen's default exemplar retrieval (paper Eq. 8), the exact cosine top-K of ``search.py``.

Besides the ``avgen.Index`` contract (``build``, ``search``) it offers what another index needs to
give exact scores and order too (the faiss example's, made through ``avgen.create("index", "exact")``):
``rescore`` (float64 cosines of candidate rows, ties to the lower index) and ``scan_error`` (how far an
fp32 matmul score of unit rows may be from that cosine).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from avgen import Index

from avgen_retrieval.search import DEFAULT_RERANK, CosineIndex, fp32_score_error, rescore, topk_cosine


class ExactParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="fp32: an fp32 scan of the bank, normalized chunk by chunk (no copy); bf16: a bfloat16 copy "
                            "of the bank for a first pass (about 2x faster on CPUs with AVX512-BF16/AMX), fp32 where "
                            "its error bound cannot prove a query's answer. The answer is the same exact one")
    rerank: int | None = Field(None, ge=0, le=4096, description="candidates kept beyond k by the first pass and "
                                                                "rescored in float64 (default: 16 for fp32, 64 for bf16)")
    chunk_size: int = Field(0, ge=0, description="bank rows per matmul (0: from a 256 MiB scratch budget)")


class ExactIndex(Index):
    """Exact cosine top-K over the bank rows as given: best first by a float64 cosine, ties to the lower index.

    The same answer on every machine, chunk size and precision (``search.py``'s proof); ``fp32``
    searches exactly as ``topk_cosine`` does, the bank kept by reference.
    """

    def __init__(self, params: ExactParams | None = None) -> None:
        self.params = params or ExactParams()
        self.bank = torch.zeros(0, 0)
        self.bf16: CosineIndex | None = None

    def __len__(self) -> int:
        return self.bank.shape[0]

    def build(self, bank: torch.Tensor) -> "ExactIndex":
        if bank.dim() != 2:
            raise ValueError(f"the exact index expects a bank [M, D], got shape {tuple(bank.shape)}")
        self.bank = bank
        self.bf16 = None
        if self.params.precision == "bf16":
            rerank = 64 if self.params.rerank is None else self.params.rerank
            self.bf16 = CosineIndex(bank, precision="bf16", chunk_size=self.params.chunk_size or None, rerank=rerank)
        return self

    def search(self, query: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.bf16 is not None:
            return self.bf16.search(query, k)
        rerank = DEFAULT_RERANK if self.params.rerank is None else self.params.rerank
        return topk_cosine(query, self.bank, k, self.params.chunk_size or None, rerank=rerank)

    def rescore(self, query: torch.Tensor, candidates: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The k best of each query row's candidate bank rows (long [N, C], -1: none) by the float64 cosine of the
        rows as given, ties to the lower index: (float64 scores [N, k], indices [N, k])."""
        return rescore(query, candidates, lambda i: self.bank[i], k)

    def scan_error(self) -> float:
        """Bound on |fp32 matmul score of the unit rows - the float64 cosine ``rescore`` gives| at the bank's width."""
        return fp32_score_error(self.bank.shape[1])
