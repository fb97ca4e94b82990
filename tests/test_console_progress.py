"""Progress where there is no terminal: plain lines (done/total, rate, ETA) in the log and on the console."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
from rich.console import Console

from avgen._core.console import LoggedProgress, progress_bar, progress_line
from conftest import run_avgen


def test_progress_line_says_done_total_rate_and_eta() -> None:
    assert progress_line("featurize train", 120, 348, 12.0) == "featurize train: 120/348 (34 %), 10/s, 12 s elapsed, ETA 23 s"
    assert progress_line("fit", 5, None, 2.0) == "fit: 5, 2.5/s, 2 s elapsed"
    assert progress_line("x", 0, 10, 0.0) == "x: 0/10 (0 %), 0/s, 0 s elapsed, ETA unknown"


def test_lines_every_interval_and_at_the_end_without_a_terminal(caplog: pytest.LogCaptureFixture) -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    with caplog.at_level(logging.INFO, logger="avgen"):
        with LoggedProgress(console=console, every=0.0) as progress:  # every=0: a line for each step
            task = progress.add_task("work", total=3)
            for _ in range(3):
                progress.advance(task)
            progress.advance(task, 0)  # no second line for an ended task
    lines = [r.getMessage() for r in caplog.records if r.name == "avgen.progress"]
    assert [line.split(",")[0] for line in lines] == ["work: 1/3 (33 %)", "work: 2/3 (67 %)", "work: 3/3 (100 %)"]
    assert "ETA" in lines[0] and "ETA" not in lines[-1]
    assert [line for line in out.getvalue().splitlines() if line.startswith("work: ")][:3] == lines


def test_a_long_interval_gives_only_the_end_line_and_a_terminal_gets_none_on_screen(caplog: pytest.LogCaptureFixture) -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200)
    with caplog.at_level(logging.INFO, logger="avgen"):
        with LoggedProgress(console=console, every=3600.0) as progress:
            task = progress.add_task("work", total=50)
            for _ in range(50):
                progress.advance(task)
    lines = [r.getMessage() for r in caplog.records if r.name == "avgen.progress"]
    assert len(lines) == 1 and lines[0].startswith("work: 50/50 (100 %)")
    assert "work: 50/50 (100 %)," not in out.getvalue()  # the terminal has the bar; the line went to the log only
    assert isinstance(progress_bar(console), LoggedProgress)


def test_a_background_run_writes_progress_lines_to_its_log(tmp_path: Path, example_plugin: None) -> None:
    recipe = tmp_path / "tones.toml"
    recipe.write_text('[run]\nname = "bg"\nseed = 0\n\n[data]\nname = "tones"\nclasses = 2\nclips_per_class = 4\n\n'
                      '[encoder]\nname = "mean_color"\n\n[representation]\nname = "mel"\nn_mels = 16\nn_iter = 2\n\n'
                      '[generator]\nname = "frame_linear"\nhidden = 8\n\n[[loss]]\nname = "rep_l1"\n\n'
                      '[train]\nepochs = 2\nbatch_size = 2\n')
    proc = run_avgen("run", str(recipe), "--out", str(tmp_path / "runs"), cwd=tmp_path,
                     env={"AVGEN_HOME": str(tmp_path / "home"), "AVGEN_PROGRESS_SECONDS": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (tmp_path / "runs" / "bg" / "log.txt").read_text()
    featurize = [line for line in log.splitlines() if "avgen.progress: featurize train: " in line]
    assert featurize and featurize[-1].split("avgen.progress: ")[1].startswith("featurize train: 4/4 (100 %)")
    assert any("avgen.progress: epoch 1/2: 1/2 (50 %)" in line for line in log.splitlines())  # within an epoch
    assert "featurize train: 4/4 (100 %)" in proc.stderr  # no terminal: the lines are on the console too
    assert json.loads((tmp_path / "runs" / "bg" / "stages.json").read_text())["stages"]["fit"]["epochs"] == 2
