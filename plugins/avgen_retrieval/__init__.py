"""Exemplar retrieval and recall@K."""

from __future__ import annotations

from avgen import hookimpl

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
