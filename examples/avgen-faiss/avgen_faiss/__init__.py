"""avgen plugin: approximate cosine retrieval with faiss (the ``faiss`` index), and recall@K measured through it."""

from __future__ import annotations

import avgen

from avgen_faiss.index import FaissIndex, FaissParams, build_index
from avgen_faiss.metric import RecallAtKFaiss, RecallFaissParams

__all__ = ["FaissIndex", "FaissParams", "RecallAtKFaiss", "RecallFaissParams", "build_index"]


@avgen.hookimpl
def register_metrics(register):
    register(
        "recall_at_k_faiss",
        lambda params, context: RecallAtKFaiss(params),
        params=RecallFaissParams,
        summary="R@K with the exemplars retrieved by a faiss index (IVF-Flat or HNSW) instead of the exact search",
        card={"library": "faiss (MIT)", "paper": "POCAN (Chen et al. 2018), Sec. 5.1; Johnson et al. 2019 (faiss)"},
    )


@avgen.hookimpl
def register_indexes(register):
    register(
        "faiss",
        lambda params, context: FaissIndex(params),
        params=FaissParams,
        summary="approximate cosine top-K with faiss (IVF-Flat, HNSW, or flat: exact), candidates rescored by avgen in float64",
        card={"library": "faiss (MIT)", "paper": "Johnson et al. 2019 (faiss)"},
    )
