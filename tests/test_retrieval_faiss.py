"""The optional faiss plugin (examples/avgen-faiss): recall of its indexes against the exact search."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

faiss = pytest.importorskip("faiss")

from conftest import REPO, run_avgen  # noqa: E402

PACKAGE = REPO / "examples" / "avgen-faiss"
sys.path.insert(0, str(PACKAGE))

import avgen  # noqa: E402
from avgen import EvalContext  # noqa: E402
from avgen._core.retrieval import time_average  # noqa: E402
from avgen_faiss import RecallAtKFaiss, RecallFaissParams, build_index  # noqa: E402
from avgen_faiss.metric import _with_missing_as_misses, top_k_overlap  # noqa: E402
from avgen_retrieval.recall import recall_at_k  # noqa: E402
from avgen_retrieval.search import topk_cosine  # noqa: E402
from test_retrieval import clustered  # noqa: E402


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(bank [6000, 64], queries [50, 64], exact top-10 indices) on clustered data."""
    rng = np.random.default_rng(0)
    both = torch.from_numpy(clustered(rng, 6050, 64, classes=17))
    bank, queries = both[:6000], both[6000:]
    return bank, queries, topk_cosine(queries, bank, 10)[1]


def overlap(found: torch.Tensor, exact: torch.Tensor) -> float:
    """Independent of the plugin's top_k_overlap: set intersections row by row."""
    return float(np.mean([len(set(f.tolist()) & set(e.tolist())) / e.numel() for f, e in zip(found, exact)]))


def test_ivf_flat_recall_against_exact(data):
    bank, queries, exact = data
    index = build_index(bank, index="ivf_flat", nlist=32, nprobe=8)
    scores, found = index.search(queries, 10)
    assert overlap(found, exact) >= 0.95
    assert torch.all(scores[:, :-1] >= scores[:, 1:])
    index.index.nprobe = 32  # every cell: the exact answer, with the exact cosines
    scores, found = index.search(queries, 10)
    assert overlap(found, exact) == 1.0
    torch.testing.assert_close(scores, topk_cosine(queries, bank, 10)[0], atol=1e-5, rtol=0)


def test_hnsw_recall_against_exact(data):
    bank, queries, exact = data
    _, found = build_index(bank[:3000], index="hnsw", hnsw_m=16, ef_search=64).search(queries, 10)
    assert overlap(found, topk_cosine(queries, bank[:3000], 10)[1]) >= 0.95


def test_flat_index_is_the_exact_search(data):
    bank, queries, exact = data
    _, found = build_index(bank, index="flat").search(queries, 10)
    assert overlap(found, exact) == 1.0
    assert top_k_overlap(found, exact) == 1.0 and top_k_overlap(found[:, :5], exact[:, 5:]) < 0.2


def test_missing_results_count_as_misses():
    bank = torch.eye(4).repeat(3, 1) + 0.01 * torch.arange(12.0).unsqueeze(1)  # 12 rows, 4 directions
    index = build_index(bank, index="ivf_flat", nlist=4, nprobe=1, train_per_list=3)
    scores, found = index.search(torch.eye(4)[:1], 12)  # one cell holds fewer than 12 rows
    assert (found == -1).any() and torch.isinf(scores[found == -1]).all()
    retrieved, labels = _with_missing_as_misses(torch.tensor([[-1, -1], [-1, 0]]), torch.tensor([2, 1]))
    assert recall_at_k(retrieved, labels, torch.tensor([1, 2]), [1, 2]) == {"R@1": 0.0, "R@2": 0.5}


def tones(labels: torch.Tensor, rng: np.random.Generator, samples: int = 5512) -> torch.Tensor:
    """One noisy sine per class (440 Hz x (class + 1)) at 22 050 Hz."""
    t = torch.arange(samples) / 22050
    freq = 440.0 * (labels.float() + 1).unsqueeze(1)
    noise = torch.from_numpy(rng.standard_normal((len(labels), samples)).astype(np.float32))
    return torch.sin(2 * torch.pi * freq * t) + 0.5 * noise


def test_metric_equals_recall_at_k_of_the_exact_search(tmp_path):
    rng = np.random.default_rng(1)
    rep = avgen.create("representation", "stft")
    train_labels, test_labels = torch.arange(240) % 6, torch.arange(30) % 4
    train_waves, test_waves = tones(train_labels, rng), tones(test_labels, rng)
    predicted = rep.encode(test_waves)
    bank = time_average(rep.encode(train_waves))
    exact = topk_cosine(time_average(predicted), bank, 10)[1]
    ctx = EvalContext(run_dir=tmp_path, sample_rate=22050, class_names=[str(i) for i in range(6)],
                      test_ids=[str(i) for i in range(30)], test_labels=test_labels, real_waves=test_waves,
                      train_labels=train_labels, train_waves=lambda: train_waves, train_bank=lambda: bank,
                      predicted_reps=predicted, retrieved=exact, representation=rep)
    params = RecallFaissParams(ks=[1, 5, 10], index="ivf_flat", nlist=4, nprobe=4, train_per_list=40)
    out = RecallAtKFaiss(params).compute(ctx)
    assert {k: out[k] for k in ("R@1", "R@5", "R@10")} == recall_at_k(exact, train_labels, test_labels, [1, 5, 10])
    assert out["exact_overlap@10"] == 1.0
    assert RecallAtKFaiss(params).compute(EvalContext(tmp_path, 22050, [], [], test_labels, test_waves)) == {}


def test_plugin_is_found_through_its_entry_point(tmp_path: Path):
    site = tmp_path / "site"  # an installed-looking distribution whose module is the package folder
    info = site / "avgen_faiss-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: avgen-faiss\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[avgen]\nfaiss = avgen_faiss\n")
    path = os.pathsep.join([str(site), str(PACKAGE), os.environ.get("PYTHONPATH", "")])
    proc = run_avgen("list", "metric", "--json", env={"PYTHONPATH": path})
    assert proc.returncode == 0, proc.stderr
    rows = {c["name"]: c for c in json.loads(proc.stdout)["components"]}
    assert rows["recall_at_k_faiss"]["plugin"] == "faiss" and rows["recall_at_k"]["plugin"] != "faiss"


def test_flat_index_gives_the_exact_answer_ties_included(data):
    # exact duplicates and +-1 rows: faiss's own order among ties follows its kernels; the rescored order does not
    bank, queries, _ = data
    rng = np.random.default_rng(1)
    signs = torch.from_numpy(rng.choice([-1.0, 1.0], size=(40, 64)).astype(np.float32))
    tied = torch.cat([bank[:500], signs, bank[:100], signs, 2 * signs])
    asked = torch.cat([queries[:10], signs[:10]])
    for rerank in (0, 4, 16):
        scores, found = build_index(tied, index="flat", rerank=rerank).search(asked, 10)
        exact_scores, exact = topk_cosine(asked, tied, 10)
        assert torch.equal(found, exact)
        torch.testing.assert_close(scores, exact_scores, atol=0, rtol=0)


def test_approximate_indexes_order_their_candidates_by_index_on_ties(data):
    bank, queries, _ = data
    tied = torch.cat([bank[:2000], bank[:2000]])  # every row twice: the copy with the lower index comes first
    for kind in ("ivf_flat", "hnsw"):
        _, found = build_index(tied, index=kind, nlist=16, nprobe=16, ef_search=64).search(queries, 10)
        for row in found.tolist():  # each copy found comes right after its original
            assert all(i - 2000 in row and row.index(i - 2000) == row.index(i) - 1 for i in row if i >= 2000)
