"""The retrieval index (kind ``index``): the core finds it through the registry, ``exact`` is the default and
searches as ``topk_cosine``, and another index (the faiss example's, or one registered here) replaces it in
``avgen generate``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import avgen
from avgen._core.plugins import get_registry
from avgen._core.recipe import ComponentSpec
from avgen._core.retrieval import build_index, search
from avgen_retrieval.search import CosineIndex, fp32_score_error, rescore, topk_cosine
from conftest import avgen_in_process
from test_retrieval import clustered


@pytest.fixture(scope="module")
def bank_and_queries() -> tuple[torch.Tensor, torch.Tensor]:
    both = torch.from_numpy(clustered(np.random.default_rng(3), 1230, 48, classes=9))
    return both[:1200], both[1200:]


def test_the_default_index_is_exact_and_searches_as_topk_cosine(bank_and_queries):
    bank, queries = bank_and_queries
    index = build_index(None, bank)
    assert isinstance(index, avgen.Index) and avgen.get_component("index", "exact").plugin == "retrieval"
    for k in (1, 10):
        scores, found = index.search(queries, k)
        expected_scores, expected = topk_cosine(queries, bank, k)
        assert torch.equal(found, expected) and torch.equal(scores, expected_scores)
    bf16 = build_index(ComponentSpec(name="exact", params={"precision": "bf16", "chunk_size": 100}), bank)
    assert torch.equal(bf16.search(queries, 10)[1], expected)
    assert torch.equal(bf16.search(queries, 10)[1], CosineIndex(bank, precision="bf16").search(queries, 10)[1])


def test_the_exact_index_rescores_as_the_search_does(bank_and_queries):
    bank, queries = bank_and_queries
    index = avgen.create("index", "exact").build(bank)
    candidates = torch.randint(0, len(bank), (len(queries), 40), generator=torch.Generator().manual_seed(0))
    candidates[:, 5] = -1  # no candidate: last, score -inf
    got = index.rescore(queries, candidates, 7)
    want = rescore(queries, candidates, lambda i: bank[i], 7)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]) and got[0].dtype == torch.float64
    assert index.scan_error() == fp32_score_error(48)


def test_an_empty_first_slot_is_one_line():
    class Empty(avgen.Index):
        def build(self, bank):
            return self

        def search(self, query, k):
            return torch.full((len(query), k), -float("inf")), torch.full((len(query), k), -1)

    with pytest.raises(avgen.AvgenError, match="found no bank row for 3 of 3 queries") as info:
        search(Empty(), torch.zeros(3, 4), 2)
    assert "\n" not in str(info.value)


class LastRow(avgen.Index):
    """Always the bank's last row: not a search, so a run of it shows that the core asked this index."""

    def build(self, bank: torch.Tensor) -> "LastRow":
        self.rows = bank.shape[0]
        return self

    def search(self, query: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(len(query), 1), torch.full((len(query), 1), self.rows - 1)


@pytest.fixture
def last_row_index():
    """The index ``last_row`` in this process's registry, for one test."""
    registry = get_registry()
    registry.register("index", "test", "last_row", lambda params, context: LastRow())
    yield
    del registry._components["index"]["last_row"]


def exemplar_provenance(capsys, run: Path, video: Path, out: Path, *settings: str) -> tuple[list[dict], bytes]:
    """(the summary's per-window provenance, the wav's bytes) of ``avgen generate --exemplar`` with ``--set`` settings."""
    args = [arg for item in settings for arg in ("--set", item)]
    code, _, lines = avgen_in_process(capsys, "generate", str(video), "--run", str(run), "-o", str(out), "--exemplar",
                                      *args)
    assert code == 0, lines[-20:]
    summary, wav = out / f"{video.stem}.avgen.json", out / f"{video.stem}.avgen.wav"
    return json.loads(summary.read_text())["provenance"], wav.read_bytes()


def test_generate_finds_the_recipes_index_through_the_registry(tiny_run: Path, tmp_path: Path, capsys, monkeypatch,
                                                               last_row_index):
    monkeypatch.setenv("AVGEN_HOME", str(tiny_run.parents[1] / "home"))
    video = sorted((tiny_run.parents[1] / "data").glob("*_denoised.mp4"))[0]
    exact, exact_wav = exemplar_provenance(capsys, tiny_run, video, tmp_path / "exact")
    named, named_wav = exemplar_provenance(capsys, tiny_run, video, tmp_path / "named", "index.name=exact",
                                           "index.precision=bf16")
    assert named == exact and named_wav == exact_wav  # the exact index, whatever its precision: the same sound
    last, _ = exemplar_provenance(capsys, tiny_run, video, tmp_path / "last", "index.name=last_row")
    clips = {window["clip"] for window in last}
    assert len(clips) == 1 and clips != {window["clip"] for window in exact}
    code, _, lines = avgen_in_process(capsys, "generate", str(video), "--run", str(tiny_run), "-o",
                                      str(tmp_path / "bad"), "--exemplar", "--set", "index.name=nope")
    assert code == 2 and "unknown index 'nope'" in lines[-1] and "Traceback" not in "\n".join(lines)


def test_the_faiss_index_replaces_the_exact_one_in_generate(tiny_run: Path, tmp_path: Path, capsys, monkeypatch):
    pytest.importorskip("faiss")
    if "faiss" not in {c.name for c in avgen.list_components("index")}:
        pytest.skip("the faiss example plugin is not installed (pip install -e examples/avgen-faiss)")
    monkeypatch.setenv("AVGEN_HOME", str(tiny_run.parents[1] / "home"))
    video = sorted((tiny_run.parents[1] / "data").glob("*_denoised.mp4"))[0]
    exact, exact_wav = exemplar_provenance(capsys, tiny_run, video, tmp_path / "exact")
    flat, flat_wav = exemplar_provenance(capsys, tiny_run, video, tmp_path / "flat", "index.name=faiss",
                                         "index.index=flat")
    assert flat == exact and flat_wav == exact_wav  # faiss's flat index, rescored by avgen: the exact answer
    ivf, _ = exemplar_provenance(capsys, tiny_run, video, tmp_path / "ivf", "index.name=faiss", "index.nprobe=64")
    assert len(ivf) == len(exact)


def test_sound_by_events_searches_with_the_recipes_index(tiny_run: Path, monkeypatch, last_row_index):
    """Events pick each onset's exemplar with the model's index, as windows do (here one that always answers the
    last row of the rows searched: the last clip of the onset's material, or of the whole bank)."""
    from avgen_timing.onsets import nearest_of_material

    monkeypatch.setenv("AVGEN_HOME", str(tiny_run.parents[1] / "home"))
    gen = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(6, 5, generator=gen), torch.randn(3, 5, generator=gen)
    labels, wanted = torch.tensor([0, 1, 0, 1, 2, 2]), [None, 0, 1]
    last = avgen.load(tiny_run, device="cpu", settings=["index.name=last_row"])
    assert nearest_of_material(last, queries, bank, labels, wanted) == [5, 2, 3]
    exact = avgen.load(tiny_run, device="cpu")
    cosine = torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(bank, dim=1).T
    expected = [int(cosine[0].argmax())] + [int(torch.nonzero(labels == w)[int(cosine[k, labels == w].argmax()), 0])
                                            for k, w in enumerate(wanted) if w is not None]
    assert nearest_of_material(exact, queries, bank, labels, wanted) == expected
