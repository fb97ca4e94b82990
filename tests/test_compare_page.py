"""The compare page (`avgen compare -o PAGE.html`): relative links to each run's report, the bar chart, players
for the same test clips with spectrograms, and the listening test's mean opinion scores; through the CLI entry point
in this process (the real `python -m avgen compare` runs in test_eval_compare.py)."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import soundfile as sf
from scipy import stats

from avgen_serve.listening import mos
from conftest import avgen_in_process

RATE = 22050
CLIPS = [f"vid{v}_{k:04d}" for v in range(3) for k in range(3)]  # 9 test clips


def write_run(root: Path, name: str, clips: list[str], seed: int = 0, r1: float = 0.4, generator: str = "can_lstm",
              report: bool = True, examples: list[str] | None = None) -> Path:
    """A run directory as `avgen run` leaves it: recipe, dataset, metrics with baselines, generated sounds, report."""
    run = root / name
    (run / "generated").mkdir(parents=True)
    (run / "recipe.toml").write_text(f'[run]\nname = "{name.split("_s")[0]}"\nseed = {seed}\nout = "runs/{name}"\n\n'
                                     f'[data]\nname = "synthetic_hits"\n\n[generator]\nname = "{generator}"\n')
    (run / "dataset.json").write_text(json.dumps({"name": "synthetic_hits", "class_names": ["wood", "metal"],
                                                  "splits": {"train": 20, "test": len(clips)}}))
    metrics = {"recall_at_k": {"R@1": r1, "R@5": 0.7, "R@10": 0.9, "chance.R@1": 0.06, "visual_nn.R@1": 0.5,
                               "train_mean.R@1": 0.05, "oracle.R@1": 1.0},
               "sound_classifier": {"acc_real": 0.8, "acc_raw": 0.3 + seed * 0.01}}
    (run / "metrics.json").write_text(json.dumps(metrics))
    t = np.arange(RATE // 2) / RATE
    index = []
    for n, clip in enumerate(clips):
        for kind, f0 in (("real", 440.0), ("raw", 660.0), ("exemplar", 880.0)):
            (run / "generated" / kind).mkdir(exist_ok=True)
            wave = 0.5 * np.sin(2 * math.pi * (f0 + 10 * n) * t) * np.exp(-8 * t)
            sf.write(run / "generated" / kind / f"{clip}.wav", wave.astype(np.float32), RATE)
        index.append({"id": clip, "label": n % 2, "class": ["wood", "metal"][n % 2], "predicted": None,
                      "exemplar_id": "train_0001", "raw": f"generated/raw/{clip}.wav",
                      "exemplar": f"generated/exemplar/{clip}.wav"})
    (run / "generated" / "index.json").write_text(json.dumps(
        {"clips": index, "examples": examples if examples is not None else clips[::2], "sample_rate": RATE}))
    if report:
        (run / "report.html").write_text(f"<!DOCTYPE html><title>{name}</title>")
    return run


def write_ratings(run: Path, scores: dict[str, list[float]]) -> None:
    ratings = [{"trial": f"t{i}", "clip": CLIPS[i % len(CLIPS)], "system": system, "score": score, "rater": "r1",
                "time": "2026-12-01T12:00:00Z"}
               for system, values in scores.items() for i, score in enumerate(values)]
    (run / "listening").mkdir()
    (run / "listening" / "ratings.json").write_text(json.dumps({"version": 1, "ratings": ratings}))


def compare(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str,
            cwd: Path) -> tuple[int, str, list[str]]:
    """`avgen compare ARGS` in the folder ``cwd``: (exit code, stdout, non-empty stderr lines)."""
    monkeypatch.chdir(cwd)
    return avgen_in_process(capsys, "compare", *args)


def refs(page: str, tag: str, attr: str) -> list[str]:
    return [unquote(m) for m in re.findall(rf"<{tag}\b[^>]*\b{attr}=\"([^\"]+)\"", page)]


def is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_page_links_chart_players_and_mos(tmp_path, capsys, monkeypatch):
    root = tmp_path / "project"
    runs = root / "runs"
    owens = write_run(runs, "owens", CLIPS, r1=0.2, generator="owens_lstm")
    for s in (0, 1):
        write_run(runs, f"pocan_s{s}", CLIPS, seed=s, r1=0.5 + 0.1 * s, generator="pocan_lstm")
    write_run(runs, "can", CLIPS[1:], generator="can_lstm", report=False)  # 8 clips: the first is missing
    raw, exemplar = [60.0, 70.0, 80.0, 94.0], [40.0]
    write_ratings(owens, {"raw": raw, "exemplar": exemplar, "reference": [90.0, 100.0]})
    code, out, lines = compare(capsys, monkeypatch, "runs/owens", "runs/pocan_s0", "runs/pocan_s1", "runs/can", "-o",
                               "pages/compare.html", cwd=root)
    assert code == 0, lines
    assert "pages/compare_files" in out.replace("\n", "")

    # moved as a whole (zipped and unpacked elsewhere), the page still finds everything: links are relative
    monkeypatch.chdir(tmp_path)  # out of the folder that moves
    moved = tmp_path / "elsewhere"
    shutil.move(root, moved)
    page_dir = moved / "pages"
    page = (page_dir / "compare.html").read_text()
    links = refs(page, "a", "href")
    assert sorted(links) == sorted(["../runs/owens/report.html", "../runs/pocan_s0/report.html", "../runs/pocan_s1/report.html"])
    assert all((page_dir / link).is_file() for link in links)
    assert "runs/can</td>" in page  # no report: the folder is named without a link
    media = refs(page, "img", "src") + refs(page, "audio", "src")
    assert media and not any(m.startswith(("/", "file:", "data:")) or str(tmp_path) in m for m in media)

    chart = page_dir / refs(page, "img", "src")[0]
    assert chart.name == "metrics.png" and is_png(chart) and chart.stat().st_size > 5000

    # players: the same clips for every run (examples first, the clip a run lacks skipped); real + 3 rows x (raw, exemplar)
    table = page.split('id="players-table"')[1].split("</table>")[0]
    rows = table.split("<tr>")[2:]
    expected = [c for c in CLIPS[::2] if c != CLIPS[0]][:4]
    assert [re.search(r"<td>([^<]+)<br>", r).group(1) for r in rows] == expected
    for row in rows:
        sounds = refs(row, "audio", "src")
        images = refs(row, "img", "src")
        assert len(sounds) == len(images) == 1 + 2 * 3  # the two seeds are one row: its first seed plays
        for sound in sounds:
            wave, rate = sf.read(page_dir / sound)
            assert rate == RATE and np.abs(wave).max() > 0.1
        assert all(is_png(page_dir / image) for image in images)
    header = table.split("<tr>")[1]
    assert "owens raw" in header and "pocan (2 seeds) exemplar" in header and "can exemplar" in header

    # MOS: mean ± t-interval half-width, computed here with scipy's t.interval; exemplar has one rating, no interval
    low, high = stats.t.interval(0.95, len(raw) - 1, loc=np.mean(raw), scale=stats.sem(raw))
    assert f"{np.mean(raw):.1f} ± {(high - low) / 2:.1f} (n=4)" == "76.0 ± 23.1 (n=4)"
    assert "<th>MOS raw</th><th>MOS exemplar</th>" in page
    owens_row = next(r for r in page.split("<tr") if "<td>owens</td>" in r)
    assert owens_row.count("76.0 ± 23.1 (n=4)") == 1 and "40.0 (n=1)" in owens_row
    pocan_row = next(r for r in page.split("<tr") if "pocan (2 seeds)</td>" in r)
    assert pocan_row.count('class="num mos"></td>') == 2  # not rated: empty cells


def test_mos_is_the_mean_and_t_interval(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert mos(run) == {}
    scores = [12.0, 55.5, 71.0, 90.0, 33.0]
    write_ratings(run, {"raw": scores, "exemplar": [80.0]})
    got = mos(run)
    low, high = stats.t.interval(0.95, len(scores) - 1, loc=np.mean(scores), scale=stats.sem(scores))
    assert got["raw"]["n"] == 5 and got["raw"]["mean"] == pytest.approx(np.mean(scores))
    assert got["raw"]["ci95"] == pytest.approx((high - low) / 2)
    assert got["exemplar"] == {"mean": 80.0, "ci95": None, "n": 1} and "reference" not in got


def test_no_mos_column_without_ratings_and_own_examples_without_shared_clips(tmp_path, capsys, monkeypatch):
    a = write_run(tmp_path, "a", CLIPS[:4])
    b = write_run(tmp_path, "b", [f"other_{k}" for k in range(4)])
    (b / "listening").mkdir()
    (b / "listening" / "ratings.json").write_text("{not json")  # unreadable: a line on the page, no column
    code, _, lines = compare(capsys, monkeypatch, "a", "b", cwd=tmp_path)
    assert code == 0, lines
    page = (tmp_path / "compare.html").read_text()
    assert "MOS raw" not in page and 'id="mos-errors"' in page and "ratings.json" in page
    assert 'id="no-shared-clips"' in page and "players-table" not in page
    assert page.count('class="players-own"') == 2
    for sound in refs(page, "audio", "src"):
        assert np.abs(sf.read(tmp_path / sound)[0]).max() > 0.1
    assert {Path(unquote(s)).name.split("-")[0] for s in refs(page, "audio", "src")} == {"0", "1"}
    assert refs(page, "a", "href") == ["a/report.html", "b/report.html"] and a.is_dir() and b.is_dir()

    # a files folder that compare did not write is left alone: one line, exit 2
    (tmp_path / "mine_files").mkdir()
    (tmp_path / "mine_files" / "keep.txt").write_text("mine")
    code, _, lines = compare(capsys, monkeypatch, "a", "-o", "mine.html", cwd=tmp_path)
    assert code == 2 and len(lines) == 1 and "mine_files" in lines[0], lines
    assert (tmp_path / "mine_files" / "keep.txt").read_text() == "mine"
