"""Shared fixtures: an isolated AVGEN_HOME and a helper that runs the real CLI in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "avgen-plugin-example"

# One intra-op thread in this process and in every subprocess the tests start (they inherit the environment),
# unless the caller chose a count. CI runs on 2 cores, often beside another heavy job: two OpenMP threads per
# process then oversubscribe the cores (measured 45 s with one thread against 56-97 s with two for the same four
# test files on the shared machine), and results no longer depend on how many cores the machine has.
# Set before torch is imported (it reads them when it loads its OpenMP and MKL runtimes).
for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")


@pytest.fixture(scope="session", autouse=True)
def temporary_files_stay_in_the_session(tmp_path_factory: pytest.TempPathFactory):
    """TMPDIR for this process and every process a test starts is a folder of this session's own, and the
    session fails when anything is left in it: a test (or the code it runs) leaves no temporary file behind
    outside its tmp_path."""
    folder = tmp_path_factory.mktemp("tmpdir")
    before = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(folder)
    # torch keeps a compile cache under $TMPDIR/torchinductor_<user> (made on bf16 CPUs): a cache, not a leftover
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(tmp_path_factory.mktemp("torchinductor")))
    tempfile.tempdir = None  # tempfile reads TMPDIR again
    yield folder
    if before is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = before
    tempfile.tempdir = None
    left = sorted(str(p.relative_to(folder)) for p in folder.iterdir())
    assert not left, f"temporary files were left behind by the tests: {left[:10]}"


@pytest.fixture
def avgen_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private AVGEN_HOME (weights, cache) for this test, in-process and for subprocesses."""
    home = tmp_path / "avgen_home"
    monkeypatch.setenv("AVGEN_HOME", str(home))
    monkeypatch.delenv("AVGEN_CACHE", raising=False)
    return home


def run_avgen(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
              timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``python -m avgen ARGS`` and capture its output (text)."""
    full_env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "avgen", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def sigint_as_in_a_terminal() -> None:
    """``preexec_fn`` for a child that a test interrupts: SIGINT at its default even when this process ignores
    it (a shell starts background jobs with SIGINT ignored, and children inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def error_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """Non-empty lines on stderr."""
    return [line for line in proc.stderr.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def one_thread():
    """Run a module on one torch thread: tiny models gain nothing from threads, and on a
    busy 2-core machine two oversubscribed OpenMP threads run them many times slower.
    (The default of the whole run since the environment above; this also holds when the caller sets
    OMP_NUM_THREADS, for modules that compare in-process results with one-thread subprocesses bit for bit.)"""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def example_plugin() -> None:
    """The example plugin must be installed (README's test command and .ci/run install it)."""
    try:
        import avgen_plugin_example  # noqa: F401
    except ImportError:
        pytest.fail("the example plugin is not installed: pip install -e examples/avgen-plugin-example")


def avgen_in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, list[str]]:
    """Run the real CLI entry point in this process: (exit code, stdout, non-empty stderr lines). Its consoles are
    200 columns wide, as ``run_avgen``'s COLUMNS=200 makes them in a subprocess (avgen._core.cli's two consoles read
    COLUMNS when it is imported: 80 in a pytest-xdist worker)."""
    from avgen._core import cli

    capsys.readouterr()
    saved = os.environ.get("COLUMNS"), [c._width for c in (cli.console, cli.err_console)]
    os.environ["COLUMNS"] = "200"
    for c in (cli.console, cli.err_console):
        c._width = 200
    try:
        cli.main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        if saved[0] is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved[0]
        for c, width in zip((cli.console, cli.err_console), saved[1]):
            c._width = width
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.strip()]


# A tiny can_lstm run on synthetic_hits (6 videos of 4 s, 3 materials, the example plugin's mean_color encoder),
# trained once per session and shared: tests read it, and copy it before changing anything in it.
TINY_RECIPE = """
[run]
name = "tiny"
seed = 0

[data]
name = "synthetic_hits"
root = "{root}"
videos = 6
classes = 3
video_seconds = 4.0

[encoder]
name = "mean_color"
fps = 8
input_size = 32

[representation]
name = "stft"
n_iter = 4

[generator]
name = "can_lstm"
hidden = 16

[[loss]]
name = "class_nll"

[[loss]]
name = "spec_smooth_l1"
weight = 50.0

[train]
epochs = 2
batch_size = 8

[[metric]]
name = "recall_at_k"
"""


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, example_plugin: None) -> Path:
    """The run directory of TINY_RECIPE (plus the av_sync metric): its data in ``run.parents[1] / "data"`` (named relative to the working
    directory, as the shipped recipes do), its feature cache in ``run.parents[1] / "home"``."""
    base = tmp_path_factory.mktemp("tiny")
    recipe = base / "tiny.toml"
    recipe.write_text(TINY_RECIPE.format(root="data") + '\n[[metric]]\nname = "av_sync"\n')  # for the timing tests
    proc = run_avgen("run", str(recipe), "--out", str(base / "runs"), env={"AVGEN_HOME": str(base / "home")}, cwd=base)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return base / "runs" / "tiny"
