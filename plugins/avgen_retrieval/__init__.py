"""Exemplar retrieval (the ``exact`` index, the core's default) and recall@K."""

from __future__ import annotations

from avgen import hookimpl

from avgen_retrieval.index import ExactIndex, ExactParams
from avgen_retrieval.recall import RecallAtK, RecallParams


@hookimpl
def register_metrics(register):
    register(
        "recall_at_k",
        lambda params, context: RecallAtK(params),
        params=RecallParams,
        summary="R@K: a test clip is a hit if any of its top-K retrieved training clips has its class",
        card={"paper": "POCAN (Chen et al. 2018), Sec. 5.1; Owens et al. 2016"},
    )


@hookimpl
def register_indexes(register):
    register(
        "exact",
        lambda params, context: ExactIndex(params),
        params=ExactParams,
        summary="exact cosine top-K, the same on every machine: an fp32 (or bf16) scan, float64 rescoring and a proof",
        card={"paper": "POCAN (Chen et al. 2018), Eq. 8", "equation": "argmax_j cos(mean_t s'(t), mean_t s_j(t))"},
    )
