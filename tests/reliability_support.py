"""Test support for the reliability tests: a tiny deterministic CPU recipe, its reference run, and comparisons.

Every run here is the real CLI in a subprocess with one torch thread, so two runs of the same
recipe give bit-identical tensors and metrics; a run that was killed and resumed must too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from conftest import avgen_in_process, run_avgen, sigint_as_in_a_terminal

# The tones dataset and mean_color encoder come from the example plugin; everything else is built in.
RECIPE = """
[run]
name = "tiny"
seed = 3

[data]
name = "tones"
classes = 3
clips_per_class = 20
sample_rate = 8000

[encoder]
name = "mean_color"
fps = 8
input_size = 16

[representation]
name = "stft"
sample_rate = 8000
n_fft = 256
hop_length = 64
n_iter = 4

[generator]
name = "can_lstm"
hidden = 16
dropout = 0.2

[[loss]]
name = "class_nll"

[[loss]]
name = "spec_smooth_l1"
weight = 50.0

[train]
epochs = {epochs}
batch_size = 8

[[metric]]
name = "mean_energy"

[[metric]]
name = "recall_at_k"
"""

EPOCHS = 16  # enough that a kill timed from the live pace after epoch <= 9 lands well before the end

# Same thread count in every process: CPU kernels are bitwise reproducible for a fixed thread count.
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
CHECKPOINTS = ("last", "best")

_references: dict[tuple[str, ...], Path] = {}


def write_recipe(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny.toml"
    path.write_text(RECIPE.format(epochs=EPOCHS))
    return path


def run_args(recipe: Path, out: Path, *overrides: str) -> list[str]:
    """``run RECIPE --out OUT --set ...`` for the CLI."""
    args = ["run", str(recipe), "--out", str(out)]
    for item in overrides:
        args += ["--set", item]
    return args


def env_for(home: Path) -> dict[str, str]:
    """The environment of one run: its own AVGEN_HOME (cache, weights) and one thread."""
    return {"AVGEN_HOME": str(home), **THREADS}


def run_cli(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    return run_avgen(*args, env=env_for(home))


def start_cli(args: list[str], home: Path, stderr: Path) -> subprocess.Popen[str]:
    """Start ``python -m avgen ARGS`` without waiting; its stderr goes to the file ``stderr``."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **env_for(home)}
    env.pop("AVGEN_CACHE", None)
    with open(stderr, "w") as err:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "avgen", *args], env=env, text=True,
                                stdout=subprocess.DEVNULL, stderr=err, preexec_fn=sigint_as_in_a_terminal)


def cli_in_process(capsys, *args: str) -> tuple[int, list[str], str]:
    """The real CLI in this process: (exit code, non-empty stderr lines, stdout)."""
    code, out, err = avgen_in_process(capsys, *args)
    return code, err, out

def reference_run(tmp_path_factory, *overrides: str) -> Path:
    """An uninterrupted run of the tiny recipe with ``overrides`` (one per pytest session); its run directory."""
    if overrides not in _references:
        base = tmp_path_factory.mktemp("reference")
        recipe = write_recipe(base)
        proc = run_cli(run_args(recipe, base / "runs", *overrides), base / "home")
        assert proc.returncode == 0, proc.stderr[-3000:]
        _references[overrides] = base / "runs" / "tiny"
    return _references[overrides]


def ledger(run_dir: Path) -> dict:
    path = run_dir / "stages.json"
    return json.loads(path.read_text())["stages"] if path.is_file() else {}


def log_count(run_dir: Path, text: str) -> int:
    path = run_dir / "log.txt"
    return path.read_text(errors="replace").count(text) if path.is_file() else 0


def wait_for_log(run_dir: Path, text: str, count: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Wait until log.txt holds ``text`` ``count`` times (the stage has started) while the process lives."""
    deadline = time.monotonic() + timeout
    while log_count(run_dir, text) < count:
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before '{text}' appeared in its log"
        assert time.monotonic() < deadline, f"'{text}' did not appear in {run_dir / 'log.txt'}"
        time.sleep(0.01)


def checkpoint_epoch(run_dir: Path) -> int | None:
    """The epoch of checkpoints/last.safetensors (the state a resume reads; the .json copy is written
    after it, so a kill between the two leaves the .json one epoch behind), or None before fit wrote one."""
    from safetensors import safe_open

    path = run_dir / "checkpoints" / "last.safetensors"
    try:
        with safe_open(str(path), "pt") as f:
            return int(json.loads(f.metadata()["avgen_state"])["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def stage_seconds(run_dir: Path, stage: str) -> float:
    return float(ledger(run_dir)[stage]["seconds"])


def assert_same_result(run_dir: Path, reference: Path) -> None:
    """Every checkpoint tensor (weights and optimiser state), the loss history and metrics.json are identical."""
    for stem in CHECKPOINTS:
        got = load_file(run_dir / "checkpoints" / f"{stem}.safetensors")
        want = load_file(reference / "checkpoints" / f"{stem}.safetensors")
        assert got.keys() == want.keys(), stem
        for key in want:
            assert torch.equal(got[key], want[key]), f"{stem}.safetensors: tensor {key} differs"
    assert history_without_times(run_dir) == history_without_times(reference)
    assert json.loads((run_dir / "metrics.json").read_text()) == json.loads((reference / "metrics.json").read_text())


def history_without_times(run_dir: Path) -> list[dict]:
    history = json.loads((run_dir / "history.json").read_text())
    return [{k: v for k, v in entry.items() if k != "seconds"} for entry in history]
