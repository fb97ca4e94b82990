"""`avgen run --jobs N`: several runs finished side by side, one process each.

The runs of one command share their data and their features, so the parent makes those first, run
after run (prepare and featurize; the second run reads the first one's features from the cache).
The remaining stages (fit, generate, evaluate, report) are independent: each run finishes in its
own ``python -m avgen run RUN_DIR/recipe.toml`` (the resolved recipe resumes the same run directory),
at most ``jobs`` at once (by default one per core and one more), each with ``cores // jobs`` torch
threads (at least one), its console output in ``RUN_DIR/output.txt``. A small model's training keeps about one core busy whatever its threads
(its operations are too small to split), so on two cores two runs at once finish in about half
the time of one after the other. A run's results depend on its thread count, as always: two runs
with the same threads give the same tensors, whether they ran side by side or alone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.live import Live
from rich.table import Table

from avgen._core.errors import AvgenError

OUTPUT = "output.txt"  # a finishing run's console output, in its run directory
POLL_SECONDS = 0.5


def jobs_for(jobs: int, runs: int, cores: int) -> int:
    """How many runs finish at once: ``jobs``, or with 0 one per core and one more, never more than the runs.

    A finishing run leaves its core idle part of the time (starting, reading and writing files, waiting for a cache
    entry another run is making) and runs of unequal length leave a core idle at the end; one run more than the
    cores fills both (docs/benchmarks.md: the quickstart's three runs on two cores)."""
    return max(1, min(runs, jobs if jobs > 0 else cores + 1))


def finish_side_by_side(runs: list[Any], jobs: int, cores: int, workers: int, strict: bool, console: Any) -> None:
    """Finish ``runs`` (their data and features made) in ``jobs`` processes at once; an AvgenError names the runs
    that failed (in the order of ``runs``), their last line and their output file, after the others have finished."""
    threads = max(1, cores // jobs)
    waiting = list(runs)
    active: dict[Path, tuple[subprocess.Popen, float, Any]] = {}
    failed: dict[Path, str] = {}
    console.print(f"finishing {len(runs)} run{'s' * (len(runs) > 1)}, {jobs} at a time, {threads} thread{'s' * (threads > 1)} each "
                  f"(console output in each run directory's {OUTPUT}; --jobs 1 runs them one after the other)",
                  markup=False, soft_wrap=True)
    try:
        with Live(_table(runs, active, {}), console=console, refresh_per_second=2, transient=True) as live:
            finished: dict[Path, str] = {}
            while waiting or active:
                while waiting and len(active) < jobs:
                    run = waiting.pop(0)
                    active[run.run_dir] = (_start(run, threads, workers, strict), time.perf_counter(), run)
                for run_dir, (proc, started, run) in list(active.items()):
                    code = proc.poll()
                    if code is None:
                        continue
                    del active[run_dir]
                    seconds = time.perf_counter() - started
                    if code == 0:
                        finished[run_dir] = f"done in {seconds:.1f} s"
                    else:
                        line = _last_error(run_dir / OUTPUT)
                        finished[run_dir] = f"failed (exit {code})"
                        failed[run_dir] = f"{run.recipe.run.name} (exit {code}: {line}; see {run_dir / OUTPUT})"
                    live.console.print(f"{run.recipe.run.name}: {finished[run_dir]}", markup=False, soft_wrap=True)
                    for warning in _warnings(run_dir / OUTPUT):  # e.g. a collapsed model: not only in output.txt
                        live.console.print(f"{run.recipe.run.name}: {warning}", markup=False, soft_wrap=True)
                live.update(_table(runs, active, finished))
                time.sleep(POLL_SECONDS)
    except BaseException:  # Ctrl-C, SIGTERM or anything else here: no run is left going on its own
        _stop(active)
        raise
    if failed:  # in the runs' order, whichever ended first
        raise AvgenError(f"{len(failed)} of {len(runs)} runs failed: "
                         + "; ".join(failed[run.run_dir] for run in runs if run.run_dir in failed))


def _start(run: Any, threads: int, workers: int, strict: bool) -> subprocess.Popen:
    args = [sys.executable, "-m", "avgen", "run", str(run.run_dir / "recipe.toml"), "--threads", str(threads),
            "--device", run.device.type, "--workers", str(workers), "--jobs", "1"] + (["--strict"] if strict else [])
    env = {**os.environ, "NO_COLOR": "1", "OMP_NUM_THREADS": str(threads)}
    with open(run.run_dir / OUTPUT, "w", encoding="utf-8") as out:  # the child keeps its own handle
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)


def _stop(active: dict[Path, tuple[subprocess.Popen, float, Any]]) -> None:
    """Ctrl-C (or SIGTERM): each run stops as on its own (its temporary files removed; the same command resumes
    it). A terminal's Ctrl-C reaches the whole process group; a run still going after a moment is sent SIGTERM,
    which avgen takes as Ctrl-C (SIGINT may be ignored: a shell starts background jobs so)."""
    procs = [proc for proc, _, _ in active.values()]
    deadline = time.monotonic() + 3.0
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def _lines(path: Path) -> list[str]:
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        return []


def _last_error(path: Path) -> str:
    """The last 'error:' line of a run's output, else its last line."""
    lines = _lines(path)
    errors = [line for line in lines if line.startswith(("error:", "internal error:"))]
    return (errors or lines or ["no output"])[-1]


def _warnings(path: Path) -> list[str]:
    """The 'warning:' lines of a run's output, each once."""
    return list(dict.fromkeys(line for line in _lines(path) if line.startswith("warning:")))


def _stage(run: Any) -> str:
    """The last stage a run has finished, as its ledger says ('fit done'), or 'starting'."""
    from avgen._core.rundir import STAGES

    try:
        stages = run.dir.ledger()["stages"]
    except AvgenError:  # read while damaged: the display waits for the next look
        return "starting"
    done = [name for name in STAGES if stages.get(name, {}).get("status") == "done"]
    return f"{done[-1]} done" if done else "starting"


def _table(runs: list[Any], active: dict[Path, tuple[subprocess.Popen, float, Any]], finished: dict[Path, str]) -> Table:
    table = Table(box=None, show_header=False, pad_edge=False)
    now = time.perf_counter()
    for run in runs:
        if run.run_dir in finished:
            state = finished[run.run_dir]
        elif run.run_dir in active:
            state = f"{_stage(run)} ({now - active[run.run_dir][1]:.0f} s)"
        else:
            state = "waiting"
        table.add_row(run.recipe.run.name, state)
    return table
