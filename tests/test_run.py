"""End-to-end runs of the real CLI with the example plugin: stages, cache, resume, lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import EXAMPLE, error_lines, run_avgen

RECIPE = EXAMPLE / "tones.toml"


def ledger(run_dir: Path) -> dict:
    return json.loads((run_dir / "stages.json").read_text())["stages"]


def test_example_recipe_runs_every_stage(tmp_path: Path, avgen_home: Path, example_plugin: None) -> None:
    proc = run_avgen("run", str(RECIPE), "--out", str(tmp_path / "runs"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "runs" / "tones_example"
    stages = ledger(run_dir)
    assert [s for s in stages] == ["prepare", "featurize", "fit", "generate", "evaluate", "report"]
    assert stages["featurize"]["train"] == {"clips": 28, "encoded": 28, "from_cache": 0}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # a 0.2..0.8 amplitude sine has mean power a^2/2: between -17 and -5 dB
    assert -17.0 < metrics["mean_energy"]["real_db"] < -5.0
    for name in ("recipe.toml", "environment.json", "log.txt", "dataset.json", "report.html", "report.md"):
        assert (run_dir / name).is_file(), name
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["seed"] == 0 and env["device"] == "cpu" and env["torch"]
    assert json.loads((run_dir / "dataset.json").read_text())["class_names"] == ["tone0", "tone1", "tone2", "tone3"]

    again = run_avgen("run", str(RECIPE), "--out", str(tmp_path / "runs"))
    assert again.returncode == 0 and again.stderr.count("done earlier, skipped") == 6


def test_cache_is_shared_and_a_changed_param_misses(tmp_path: Path, avgen_home: Path, example_plugin: None) -> None:
    out = str(tmp_path / "runs")
    assert run_avgen("run", str(RECIPE), "--out", out, "--set", "run.name=first").returncode == 0
    second = run_avgen("run", str(RECIPE), "--out", out, "--set", "run.name=second")
    assert second.returncode == 0
    stages = ledger(tmp_path / "runs" / "second")
    assert stages["featurize"]["train"]["encoded"] == 0 and stages["featurize"]["train"]["from_cache"] == 28
    changed = run_avgen("run", str(RECIPE), "--out", out, "--set", "run.name=third", "--set", "encoder.fps=5")
    assert changed.returncode == 0
    assert ledger(tmp_path / "runs" / "third")["featurize"]["train"]["encoded"] == 28
    info = run_avgen("cache", "info", "--json")
    assert json.loads(info.stdout)["entries"] > 0


def test_a_different_recipe_in_the_same_run_dir_is_refused(tmp_path: Path, avgen_home: Path, example_plugin: None) -> None:
    out = str(tmp_path / "runs")
    assert run_avgen("run", str(RECIPE), "--out", out).returncode == 0
    proc = run_avgen("run", str(RECIPE), "--out", out, "--set", "data.clips_per_class=20")
    assert proc.returncode == 2 and "--fresh" in error_lines(proc)[-1] and "Traceback" not in proc.stderr
    fresh = run_avgen("run", str(RECIPE), "--out", out, "--set", "data.clips_per_class=20", "--fresh")
    assert fresh.returncode == 0
    assert ledger(tmp_path / "runs" / "tones_example")["prepare"]["clips"]["train"] == 48


def test_killed_run_resumes_after_the_last_finished_stage(tmp_path: Path, avgen_home: Path, example_plugin: None) -> None:
    """kill -9 during featurize; the rerun skips prepare, finishes, and matches an uninterrupted run."""
    out = tmp_path / "runs"
    args = ["run", str(RECIPE), "--out", str(out), "--set", "data.clips_per_class=100", "--set", "encoder.input_size=64"]
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "avgen", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    run_dir = out / "tones_example"
    deadline = time.time() + 300
    while time.time() < deadline:
        if (run_dir / "stages.json").is_file() and "prepare" in ledger(run_dir):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert "report" not in ledger(run_dir)

    resumed = run_avgen(*args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "prepare: done earlier, skipped" in resumed.stderr
    stages = ledger(run_dir)
    assert list(stages) == ["prepare", "featurize", "fit", "generate", "evaluate", "report"]

    reference = run_avgen(*args[:-4], "--set", "data.clips_per_class=100", "--set", "encoder.input_size=64",
                          "--set", "run.name=uninterrupted")
    assert reference.returncode == 0
    a = json.loads((run_dir / "metrics.json").read_text())
    b = json.loads((out / "uninterrupted" / "metrics.json").read_text())
    assert a == b


def test_second_process_on_the_same_run_dir_is_refused(tmp_path: Path, avgen_home: Path, example_plugin: None) -> None:
    from avgen.errors import RunLockedError
    from avgen.rundir import RunDir

    run_dir = tmp_path / "runs" / "tones_example"
    with RunDir(run_dir).lock():
        proc = run_avgen("run", str(RECIPE), "--out", str(tmp_path / "runs"))
    assert proc.returncode == 2
    assert "another avgen process" in error_lines(proc)[-1]
    with RunDir(run_dir).lock():
        with pytest.raises(RunLockedError):
            with RunDir(run_dir).lock():
                pass


def test_only_reruns_one_stage(tmp_path: Path, avgen_home: Path, example_plugin: None) -> None:
    out = str(tmp_path / "runs")
    assert run_avgen("run", str(RECIPE), "--out", out).returncode == 0
    before = ledger(tmp_path / "runs" / "tones_example")
    proc = run_avgen("run", str(RECIPE), "--out", out, "--only", "evaluate")
    assert proc.returncode == 0, proc.stderr
    after = ledger(tmp_path / "runs" / "tones_example")
    assert after["evaluate"]["finished"] > before["evaluate"]["finished"]
    assert after["featurize"] == before["featurize"] and after["fit"] == before["fit"]


def test_each_variant_logs_only_its_own_lines(tmp_path: Path, avgen_home: Path, example_plugin: None) -> None:
    recipe = tmp_path / "two.toml"
    recipe.write_text(RECIPE.read_text() + '\n[[variant]]\nname = "small"\ndata = { clips_per_class = 6 }\n'
                      '\n[[variant]]\nname = "large"\ndata = { clips_per_class = 10 }\n')
    proc = run_avgen("run", str(recipe), "--out", str(tmp_path / "runs"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, train in (("small", 12), ("large", 24)):
        lines = (tmp_path / "runs" / "tones_example" / name / "log.txt").read_text().splitlines()
        started = [line.split("stage ")[1] for line in lines if line.endswith(" started")]
        assert started == [f"{stage} started" for stage in ("prepare", "featurize", "fit", "generate", "evaluate", "report")]
        prepared = [line for line in lines if "stage prepare done" in line]
        assert len(prepared) == 1 and f'"train": {train},' in prepared[0], name
