"""avgen_serve.listening: the ratings file of a listening test and its mean opinion scores."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from avgen._core.errors import AvgenError
from avgen_serve.listening import append_ratings, check_rating, mos, mos_line, ratings_path, read_ratings


def rating(system: str, score: float, clip: str = "c1", trial: str = "t1") -> dict:
    return {"trial": trial, "clip": clip, "system": system, "score": score, "rater": "ann",
            "time": "2026-12-01T16:00:00+00:00"}


def test_no_file_means_no_ratings(tmp_path: Path) -> None:
    assert read_ratings(tmp_path) == [] and mos(tmp_path) == {}


def test_append_writes_the_agreed_format_and_keeps_earlier_ratings(tmp_path: Path) -> None:
    assert append_ratings(tmp_path, [rating("raw", 40), rating("reference", 90)]) == 2
    assert append_ratings(tmp_path, [rating("exemplar", 55.5, trial="t2")]) == 3
    data = json.loads(ratings_path(tmp_path).read_text())
    assert data["version"] == 1
    assert [(r["trial"], r["system"], r["score"]) for r in data["ratings"]] == [
        ("t1", "raw", 40.0), ("t1", "reference", 90.0), ("t2", "exemplar", 55.5)]
    assert set(data["ratings"][0]) == {"trial", "clip", "system", "score", "rater", "time"}
    assert not [p for p in ratings_path(tmp_path).parent.iterdir() if p.name.endswith(".tmp")]


def test_mos_matches_scipy_t_interval(tmp_path: Path) -> None:
    raw = [12.0, 40.0, 33.0, 70.0, 21.0]
    append_ratings(tmp_path, [rating("raw", s) for s in raw] + [rating("reference", 88.0)])
    scores = mos(tmp_path)
    low, high = stats.t.interval(0.95, len(raw) - 1, loc=np.mean(raw), scale=stats.sem(raw))
    assert scores["raw"]["n"] == 5
    assert scores["raw"]["mean"] == pytest.approx(np.mean(raw))
    assert scores["raw"]["ci95"] == pytest.approx((high - low) / 2)
    assert scores["reference"] == {"mean": 88.0, "ci95": None, "n": 1}
    assert "exemplar" not in scores
    assert list(scores) == ["reference", "raw"]
    assert mos_line(scores).startswith("reference 88.0 (n=1); raw 35.2 +- ")


@pytest.mark.parametrize("bad, word", [
    ({"trial": "t"}, "lacks"),
    (rating("loud", 5), "system"),
    (rating("raw", 101), "0 to 100"),
    (rating("raw", True), "0 to 100"),
    ({**rating("raw", 5), "rater": 3}, "rater"),
])
def test_bad_ratings_are_refused_before_writing(tmp_path: Path, bad: dict, word: str) -> None:
    with pytest.raises(AvgenError, match=word):
        append_ratings(tmp_path, [rating("raw", 10), bad])
    assert not ratings_path(tmp_path).exists()
    with pytest.raises(AvgenError):
        check_rating(bad)


def test_reader_skips_odd_entries_and_names_a_damaged_file(tmp_path: Path) -> None:
    path = ratings_path(tmp_path)
    path.parent.mkdir()
    path.write_text(json.dumps({"version": 1, "ratings": [rating("raw", 10), {"score": "x"}, 7]}))
    assert [r["score"] for r in read_ratings(tmp_path)] == [10.0]
    append_ratings(tmp_path, [rating("raw", 20)])  # the odd entries stay in the file as they were
    assert len(json.loads(path.read_text())["ratings"]) == 4
    path.write_text("{not json")
    with pytest.raises(AvgenError, match="ratings.json: unreadable"):
        read_ratings(tmp_path)
    with pytest.raises(AvgenError):
        append_ratings(tmp_path, [rating("raw", 20)])
    assert path.read_text() == "{not json"


def _append_many(run_dir: str, worker: int) -> None:
    for i in range(10):
        append_ratings(run_dir, [rating("raw", float(i), trial=f"w{worker}-{i}")])


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_append_many, args=(str(tmp_path), w)) for w in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert sorted(r["trial"] for r in read_ratings(tmp_path)) == sorted(f"w{w}-{i}" for w in range(3) for i in range(10))


def test_report_shows_the_mean_opinion_scores(tmp_path: Path) -> None:
    from avgen._core.report import collect
    from avgen_eval.report import render_html, render_markdown

    assert "Listening test" not in render_html(collect(tmp_path))
    append_ratings(tmp_path, [rating("raw", 30), rating("raw", 50), rating("reference", 95)])
    contents = collect(tmp_path)
    page, markdown = render_html(contents), render_markdown(contents)
    half = stats.t.ppf(0.975, 1) * stats.sem([30, 50])
    assert "<h2>Listening test</h2>" in page and f"<td>± {half:.1f}</td>" in page
    assert "| raw | 40.0 | ± " + f"{half:.1f} | 2 |" in markdown and "| reference | 95.0 | - | 1 |" in markdown
    ratings_path(tmp_path).write_text("{broken")
    assert "unreadable listening-test ratings" in render_html(collect(tmp_path))
