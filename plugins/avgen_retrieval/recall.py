"""Recall at K of the exemplar retrieval: the paper's main metric (Tables 2 and 4)."""

from __future__ import annotations

import logging
from typing import Annotated

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from avgen import AvgenError, EvalContext, Metric

from avgen_retrieval.baselines import BASELINES, baseline_retrievals, chance_recall

log = logging.getLogger("avgen.retrieval")


class RecallParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ks: list[Annotated[int, Field(ge=1, le=100000)]] = Field(default=[1, 5, 10], min_length=1, max_length=100, description="cut-offs K; reported as R@K")
    baselines: bool = Field(True, description="also report the reference baselines' R@K (chance, visual_nn, train_mean, oracle) as '<baseline>.R@K'")

    @field_validator("ks")
    @classmethod
    def _positive(cls, ks: list[int]) -> list[int]:
        if not ks or any(k < 1 for k in ks):
            raise ValueError("ks must be a non-empty list of integers >= 1")
        return ks


def recall_at_k(retrieved: torch.Tensor, train_labels: torch.Tensor, test_labels: torch.Tensor, ks: list[int]) -> dict[str, float]:
    """Fraction of test clips with at least one same-class clip among their top-K retrieved ones.

    ``retrieved`` is long [N, K_max] (training indices, best first; -1, an approximate index's empty slot, is a
    miss); a K above K_max uses all.
    """
    if retrieved.shape[0] != test_labels.shape[0]:
        raise AvgenError(f"recall_at_k: {retrieved.shape[0]} retrieval rows for {test_labels.shape[0]} test clips; re-run the generate stage")
    if retrieved.numel() and int(retrieved.max()) >= train_labels.shape[0]:
        raise AvgenError(f"recall_at_k: retrieved index {int(retrieved.max())} is outside the {train_labels.shape[0]} training clips; re-run the generate stage")
    retrieved = retrieved.long()
    same = (train_labels[retrieved.clamp_min(0)] == test_labels.long().unsqueeze(1)) & (retrieved >= 0)  # [N, K_max]
    out = {}
    for k in ks:
        hits = same[:, :k].any(dim=1).float()
        out[f"R@{k}"] = round(float(hits.mean()), 6) if len(hits) else 0.0
    return out


class RecallAtK(Metric):
    """The recall_at_k metric over ctx.retrieved and ctx.train_labels."""

    def __init__(self, params: RecallParams) -> None:
        self.params = params

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        if ctx.train_labels is None:
            log.info("recall_at_k: the run has no training clips; skipped")
            return {}
        out: dict[str, float] = {}
        if ctx.retrieved is None:
            log.info("recall_at_k: no retrieval results in this run (no generator); only the baselines are scored")
        else:
            out.update(recall_at_k(ctx.retrieved, ctx.train_labels, ctx.test_labels, self.params.ks))
        if ctx.retrieved_by_class is not None:  # the predicted class's clips first: apart from the paper's R@K
            by_class = recall_at_k(ctx.retrieved_by_class, ctx.train_labels, ctx.test_labels, self.params.ks)
            out.update({f"{name}_by_class": value for name, value in by_class.items()})  # no dot: not a baseline
        if ctx.predicted_labels is not None and len(ctx.test_labels):
            correct = (ctx.predicted_labels.long() == ctx.test_labels.long()).double().mean()
            out["video_class_acc"] = round(float(correct), 6)
        if self.params.baselines:
            out.update(self._baselines(ctx))
        return out

    def _baselines(self, ctx: EvalContext) -> dict[str, float]:
        """'<baseline>.R@K' for chance and each baseline whose inputs the run has, cut at the run's retrieval depth."""
        depth = ctx.retrieved.shape[1] if ctx.retrieved is not None else max(self.params.ks)
        results = {"chance": chance_recall(ctx.train_labels, ctx.test_labels, self.params.ks, depth)}
        retrieved = baseline_retrievals(k=depth, train_bank=ctx.train_bank, real_reps=ctx.real_reps,
                                        test_features=ctx.test_features, train_features=ctx.train_features,
                                        count=len(ctx.test_labels))
        for name, rows in retrieved.items():
            results[name] = recall_at_k(rows, ctx.train_labels, ctx.test_labels, self.params.ks)
        return {f"{name}.{key}": value for name in BASELINES if name in results for key, value in results[name].items()}
