"""End-to-end runs of the real CLI with the example plugin: stages, cache, resume, lock.

One real `python -m avgen run` of the example recipe is shared by the module (``example_run``); the
tests that rerun, refuse or replace it restore it first and call the CLI entry point in this process
(``avgen_in_process``), which saves an interpreter start (torch import, 2-3 s) per call. What needs a
second process stays one: the shared run, the kill -9 and the run-directory lock.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from conftest import EXAMPLE, avgen_in_process, error_lines, run_avgen

RECIPE = EXAMPLE / "tones.toml"
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # as conftest.one_thread in this process


def ledger(run_dir: Path) -> dict:
    return json.loads((run_dir / "stages.json").read_text())["stages"]


@pytest.fixture(scope="module")
def example_run(tmp_path_factory: pytest.TempPathFactory, example_plugin: None) -> tuple[Path, Path]:
    """The example recipe run once by the real CLI in a subprocess: (its --out folder, its AVGEN_HOME).
    A pristine copy is kept beside it for ``restored``."""
    base = tmp_path_factory.mktemp("example")
    proc = run_avgen("run", str(RECIPE), "--out", str(base / "runs"), env={"AVGEN_HOME": str(base / "home")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    shutil.copytree(base / "runs", base / "pristine")
    return base / "runs", base / "home"


def restored(example_run: tuple[Path, Path]) -> Path:
    """The example run's --out folder as the shared run left it (a test may rerun or replace it). The same
    folder, not a copy elsewhere: --out is part of the resolved recipe, so a copy would be another recipe."""
    out = example_run[0]
    shutil.rmtree(out)
    shutil.copytree(out.parent / "pristine", out)
    return out


def test_example_recipe_runs_every_stage(example_run: tuple[Path, Path], avgen_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = example_run[0] / "tones_example"
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

    code, _, lines = avgen_in_process(capsys, "run", str(RECIPE), "--out", str(restored(example_run)))
    assert code == 0 and "\n".join(lines).count("done earlier, skipped") == 6, lines


def test_cache_is_shared_and_a_changed_param_misses(example_run: tuple[Path, Path], tmp_path: Path, avgen_home: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(example_run[1], avgen_home)  # the cache the first run filled
    out = str(tmp_path / "runs")
    code, _, lines = avgen_in_process(capsys, "run", str(RECIPE), "--out", out, "--set", "run.name=second")
    assert code == 0, lines[-20:]
    stages = ledger(tmp_path / "runs" / "second")
    assert stages["featurize"]["train"]["encoded"] == 0 and stages["featurize"]["train"]["from_cache"] == 28
    code, _, lines = avgen_in_process(capsys, "run", str(RECIPE), "--out", out, "--set", "run.name=third",
                                      "--set", "encoder.fps=5")
    assert code == 0, lines[-20:]
    assert ledger(tmp_path / "runs" / "third")["featurize"]["train"]["encoded"] == 28
    code, printed, _ = avgen_in_process(capsys, "cache", "info", "--json")
    assert code == 0 and json.loads(printed)["entries"] > 0


def test_a_different_recipe_in_the_same_run_dir_is_refused(example_run: tuple[Path, Path], avgen_home: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = str(restored(example_run))
    code, _, lines = avgen_in_process(capsys, "run", str(RECIPE), "--out", out, "--set", "data.clips_per_class=20")
    assert code == 2 and "--fresh" in lines[-1] and "Traceback" not in "\n".join(lines)
    recorded = tomllib.loads((Path(out) / "tones_example" / "recipe.toml").read_text())["data"]["clips_per_class"]
    assert f"first: data.clips_per_class was {recorded!r}, now 20" in lines[-1]  # which setting differs
    code, _, lines = avgen_in_process(capsys, "run", str(RECIPE), "--out", out, "--set", "data.clips_per_class=20",
                                      "--fresh")
    assert code == 0, lines[-20:]
    assert ledger(Path(out) / "tones_example")["prepare"]["clips"]["train"] == 48


def test_killed_run_resumes_after_the_last_finished_stage(tmp_path: Path, avgen_home: Path, capsys: pytest.CaptureFixture[str],
                                                          one_thread: None, example_plugin: None) -> None:
    """kill -9 during featurize; the rerun skips prepare, finishes, and matches an uninterrupted run.

    Every process runs one thread (the killed one by its environment, this one by ``one_thread``): results
    are compared bit for bit, which holds for one machine and one thread count, not across thread counts."""
    out = tmp_path / "runs"
    args = ["run", str(RECIPE), "--out", str(out), "--set", "data.clips_per_class=100", "--set", "encoder.input_size=64"]
    env = {**os.environ, "COLUMNS": "200", **ONE_THREAD}
    proc = subprocess.Popen([sys.executable, "-m", "avgen", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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

    code, _, lines = avgen_in_process(capsys, *args)
    assert code == 0, lines[-20:]
    assert "prepare: done earlier, skipped" in "\n".join(lines)
    stages = ledger(run_dir)
    assert list(stages) == ["prepare", "featurize", "fit", "generate", "evaluate", "report"]

    code, _, lines = avgen_in_process(capsys, *args, "--set", "run.name=uninterrupted")
    assert code == 0, lines[-20:]
    a = json.loads((run_dir / "metrics.json").read_text())
    b = json.loads((out / "uninterrupted" / "metrics.json").read_text())
    assert a == b


def test_second_process_on_the_same_run_dir_is_refused(tmp_path: Path, avgen_home: Path, example_plugin: None) -> None:
    from avgen._core.errors import RunLockedError
    from avgen._core.rundir import RunDir

    run_dir = tmp_path / "runs" / "tones_example"
    with RunDir(run_dir).lock():
        proc = run_avgen("run", str(RECIPE), "--out", str(tmp_path / "runs"))
    assert proc.returncode == 2
    assert "another avgen process" in error_lines(proc)[-1]
    with RunDir(run_dir).lock():
        with pytest.raises(RunLockedError):
            with RunDir(run_dir).lock():
                pass


def test_only_reruns_one_stage(example_run: tuple[Path, Path], avgen_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = restored(example_run)
    before = ledger(out / "tones_example")
    code, _, lines = avgen_in_process(capsys, "run", str(RECIPE), "--out", str(out), "--only", "evaluate")
    assert code == 0, lines[-20:]
    after = ledger(out / "tones_example")
    assert after["evaluate"]["finished"] > before["evaluate"]["finished"]
    assert after["featurize"] == before["featurize"] and after["fit"] == before["fit"]


def test_each_variant_logs_only_its_own_lines(tmp_path: Path, avgen_home: Path, example_plugin: None) -> None:
    recipe = tmp_path / "two.toml"
    recipe.write_text(RECIPE.read_text() + '\n[[variant]]\nname = "small"\ndata = { clips_per_class = 6 }\n'
                      '\n[[variant]]\nname = "large"\ndata = { clips_per_class = 10 }\n')
    proc = run_avgen("run", str(recipe), "--out", str(tmp_path / "runs"), "--jobs", "1")  # side by side: test_run_jobs.py
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, train in (("small", 12), ("large", 24)):
        lines = (tmp_path / "runs" / "tones_example" / name / "log.txt").read_text().splitlines()
        started = [line.split("stage ")[1] for line in lines if line.endswith(" started")]
        assert started == [f"{stage} started" for stage in ("prepare", "featurize", "fit", "generate", "evaluate", "report")]
        prepared = [line for line in lines if "stage prepare done" in line]
        assert len(prepared) == 1 and f'"train": {train},' in prepared[0], name
