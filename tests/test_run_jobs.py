"""`avgen run --jobs N`: after their data and features are made, several runs finish side by side, one process
each (avgen._core.cli.parallel), with the same results as one after the other at the same thread count."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import avgen
from avgen._core.cli.parallel import OUTPUT, finish_side_by_side, jobs_for
from avgen._core.console import make_console
from avgen._core.rundir import RunDir
from conftest import EXAMPLE, avgen_in_process

TWO_SEEDS = '\n[[variant]]\nname = "first"\n\n[[variant]]\nname = "second"\nrun = { seed = 1 }\ntrain = { epochs = 0 }\n'
STAGES = ("prepare", "featurize", "fit", "generate", "evaluate", "report")


def test_jobs_are_one_per_core_and_one_more_unless_given_and_never_more_than_the_runs() -> None:
    assert jobs_for(0, runs=3, cores=2) == 3 and jobs_for(0, runs=5, cores=2) == 3 and jobs_for(0, runs=2, cores=2) == 2
    assert jobs_for(0, runs=3, cores=8) == 3 and jobs_for(0, runs=1, cores=8) == 1 and jobs_for(0, runs=4, cores=1) == 2
    assert jobs_for(1, runs=3, cores=8) == 1 and jobs_for(5, runs=3, cores=1) == 3


def test_runs_finished_side_by_side_give_what_they_give_one_after_the_other(tmp_path: Path, capsys, avgen_home: Path,
                                                                            example_plugin: None) -> None:
    recipe = tmp_path / "two.toml"
    text = (EXAMPLE / "tones_generate.toml").read_text()
    for old, new in (("epochs = 20", "epochs = 2"), ("classes = 4", "classes = 2"), ("clips_per_class = 12", "clips_per_class = 6")):
        assert old in text
        text = text.replace(old, new)
    recipe.write_text(text + TWO_SEEDS)
    # two jobs on two threads: each run finishes in its own process with one thread, as the runs below do in this one
    code, out, lines = avgen_in_process(capsys, "run", str(recipe), "--out", str(tmp_path / "side"), "--jobs", "2",
                                        "--threads", "2")
    assert code == 0, lines[-20:]
    assert "finishing 2 runs, 2 at a time, 1 thread each" in " ".join(lines), lines
    # a warning of a finishing run reaches this console, not only its output.txt (here: "second" is untrained)
    assert sum(line.startswith("second: warning: train.epochs = 0") for line in lines) == 1, lines
    code, again, lines = avgen_in_process(capsys, "run", str(recipe), "--out", str(tmp_path / "side"), "--jobs", "2")
    assert code == 0 and not any("finishing" in line for line in lines), lines  # finished runs start no process
    assert sum("done earlier, skipped" in line for line in lines) == 4 and again.count("run directory:") == 2
    code, _, lines = avgen_in_process(capsys, "run", str(recipe), "--out", str(tmp_path / "alone"), "--jobs", "1",
                                      "--threads", "1")
    assert code == 0, lines[-20:]
    assert not any("finishing" in line for line in lines)
    for name in ("first", "second"):
        side, alone = tmp_path / "side" / "tones_frame_linear" / name, tmp_path / "alone" / "tones_frame_linear" / name
        assert f"run directory: {side}" in out
        for stem in ("best", "last"):
            a, b = (load_file(d / "checkpoints" / f"{stem}.safetensors") for d in (side, alone))
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (name, stem)
        assert json.loads((side / "metrics.json").read_text()) == json.loads((alone / "metrics.json").read_text())
        started = [line.split("stage ")[1] for line in (side / "log.txt").read_text().splitlines()
                   if line.endswith(" started")]  # the parent's two stages and the finishing process's four
        assert started == [f"{stage} started" for stage in STAGES], name
        assert "report:" in (side / OUTPUT).read_text()
    first = load_file(tmp_path / "side" / "tones_frame_linear" / "first" / "checkpoints" / "best.safetensors")
    second = load_file(tmp_path / "side" / "tones_frame_linear" / "second" / "checkpoints" / "best.safetensors")
    assert any(not torch.equal(first[k], second[k]) for k in first)  # the two runs differ: the check above can tell


def test_runs_that_fail_side_by_side_are_named_with_their_last_line_and_output(tmp_path: Path) -> None:
    """Each finishing process reads its run directory's recipe.toml; here one is not TOML and one is missing: both
    processes fail on their own, and one error names both runs, their exit codes, last lines and output files."""
    runs = []
    for name, text in (("broken", "not = [toml"), ("empty", None)):
        run_dir = tmp_path / name
        run_dir.mkdir()
        if text is not None:
            (run_dir / "recipe.toml").write_text(text)
        runs.append(types.SimpleNamespace(run_dir=run_dir, dir=RunDir(run_dir), device=torch.device("cpu"),
                                          recipe=types.SimpleNamespace(run=types.SimpleNamespace(name=name))))
    with pytest.raises(avgen.AvgenError) as caught:
        finish_side_by_side(runs, jobs=2, cores=2, workers=0, strict=False, console=make_console(stderr=True))
    message = str(caught.value)
    assert message.startswith("2 of 2 runs failed: broken (exit 2: error: "), message
    assert "invalid TOML" in message and f"see {tmp_path / 'broken' / OUTPUT}" in message
    assert "empty (exit 2: error: " in message and "recipe file not found" in message


def test_an_interrupted_parent_leaves_no_run_going(tmp_path: Path) -> None:
    """_stop, as after Ctrl-C or SIGTERM in the parent: a run that does not end on its own within a moment (here one
    that ignores SIGINT, as a shell's background job does) is sent SIGTERM, which avgen takes as Ctrl-C."""
    import signal
    import subprocess
    import sys

    from avgen._core.cli.parallel import _stop

    ignores_sigint = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); print('up', flush=True); time.sleep(120)"
    procs = [subprocess.Popen([sys.executable, "-c", ignores_sigint], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        assert proc.stdout.readline().strip() == "up"  # its handler is set before the parent stops it
    _stop({tmp_path / str(i): (proc, 0.0, None) for i, proc in enumerate(procs)})
    assert [proc.poll() for proc in procs] == [-signal.SIGTERM, -signal.SIGTERM]
