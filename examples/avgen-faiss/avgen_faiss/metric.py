"""recall_at_k_faiss: the paper's R@K, with the exemplars found by a faiss index."""

from __future__ import annotations

import logging

import torch

from avgen import EvalContext, Metric, time_average
from avgen_faiss.index import FaissParams, build_index
from avgen_retrieval.recall import RecallParams, recall_at_k

log = logging.getLogger("avgen.faiss")


class RecallFaissParams(FaissParams, RecallParams):
    """recall_at_k's cut-offs plus the faiss index settings."""


class RecallAtKFaiss(Metric):
    """R@K over the faiss top-K of each generated clip; also how much of the exact top-K it found."""

    def __init__(self, params: RecallFaissParams) -> None:
        self.params = params

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        if ctx.predicted_reps is None or ctx.train_labels is None or ctx.train_bank is None:
            log.info("recall_at_k_faiss: no generated representations or training clips in this run; skipped")
            return {}
        index = build_index(ctx.train_bank(), FaissParams(**self.params.model_dump(include=set(FaissParams.model_fields))))
        k = max(self.params.ks)
        _, retrieved = index.search(time_average(ctx.predicted_reps), k)
        out = recall_at_k(*_with_missing_as_misses(retrieved, ctx.train_labels), ctx.test_labels, self.params.ks)
        if ctx.retrieved is not None and ctx.retrieved.shape[0] == retrieved.shape[0]:
            kk = min(k, ctx.retrieved.shape[1], retrieved.shape[1])
            out[f"exact_overlap@{kk}"] = round(top_k_overlap(retrieved[:, :kk], ctx.retrieved[:, :kk]), 6)
        return out


def top_k_overlap(found: torch.Tensor, exact: torch.Tensor) -> float:
    """Mean fraction of each row's exact top-K indices that ``found`` also holds (recall vs exact search)."""
    if exact.numel() == 0:
        return 0.0
    hits = (found.unsqueeze(2) == exact.unsqueeze(1)).any(dim=1)  # [N, K]: exact entry found
    return float(hits.float().mean())


def _with_missing_as_misses(retrieved: torch.Tensor, train_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Point faiss's -1 (no result) at an extra training label that matches no class."""
    labels = torch.cat([train_labels.long(), torch.tensor([-1])])
    return retrieved.masked_fill(retrieved < 0, len(train_labels)), labels
