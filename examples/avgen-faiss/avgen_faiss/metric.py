"""recall_at_k_faiss: the paper's R@K, with the exemplars found by a faiss index.

R@K itself is avgen's ``recall_at_k`` metric, made through ``avgen.create`` and given the faiss
retrieval in place of the run's (a plugin never imports another plugin's package).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Annotated

import torch
from pydantic import BaseModel, ConfigDict, Field

import avgen
from avgen import EvalContext, Metric, time_average
from avgen_faiss.index import FaissParams, build_index

log = logging.getLogger("avgen.faiss")


class CutoffParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ks: list[Annotated[int, Field(ge=1, le=100000)]] = Field(default=[1, 5, 10], min_length=1, max_length=100,
                                                             description="cut-offs K; reported as R@K (as recall_at_k's)")


class RecallFaissParams(FaissParams, CutoffParams):
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
        pointed, labels = _with_missing_as_misses(retrieved, ctx.train_labels)
        recall = avgen.create("metric", "recall_at_k", ks=self.params.ks, baselines=False)
        scored = recall.compute(dataclasses.replace(ctx, retrieved=pointed, train_labels=labels, predicted_labels=None))
        out = {key: value for key, value in scored.items() if key.startswith("R@")}
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
