"""Ctrl-C at every instant of an atomic write leaves the old file or the new one, and no temporary file.

Not by luck: a trace function follows every bytecode instruction executed in the writer's frames
(avgen/_core/atomic.py, avgen/_core/tensorfile.py and the standard library code they call: contextlib, tempfile,
pathlib, shutil, os) and raises a real SIGINT at the N-th place where CPython can deliver one, for every
N from the first to the last; Python runs its handler exactly as for a Ctrl-C from the terminal. CPython
delivers signals only at its "eval breaker" checks: on entering a function (RESUME), on a backward jump,
and when a call returns. So the signal is raised before each RESUME and backward jump, and before the
first instruction after each call (and, more strictly than CPython, before each call too).

An exception raised from a trace function can leave CPython's record of the exception being handled out of
step (later exceptions then carry a stale ``__context__``), so each every-instant scenario runs in a fresh
interpreter (``isolated``) rather than in the test process, where it would outlive the test.
"""

from __future__ import annotations

import contextlib
import dis
import os
import pathlib
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Callable

import pytest

from avgen._core.atomic import TEMP_SUFFIX, atomic_path, signals_deferred, stale_temp_files, staging_folder, write_bytes
from avgen._core.tensorfile import scratch_file

NOP = dis.opmap["NOP"]
CALLS = {dis.opmap[name] for name in ("CALL", "CALL_FUNCTION_EX") if name in dis.opmap}
CHECKS = {code for name, code in dis.opmap.items()
          if name == "RESUME" or (name.startswith(("JUMP_BACKWARD", "POP_JUMP_BACKWARD")) and "NO_INTERRUPT" not in name)}


def _watched_files() -> set[str]:
    """The writer's modules and the standard library code they call into (a signal can land inside those too)."""
    import avgen._core.atomic
    import avgen._core.tensorfile

    return {avgen._core.atomic.__file__, avgen._core.tensorfile.__file__, contextlib.__file__, tempfile.__file__,
            pathlib.__file__, shutil.__file__, os.__file__}


def interrupt_at(step: int, action: Callable[[], None]) -> tuple[bool, int]:
    """Run ``action`` with SIGINT raised at its ``step``-th traced instruction: (interrupted, instructions seen)."""
    files, seen, calls = _watched_files(), 0, {}

    def tracer(frame, event, arg):
        nonlocal seen
        if frame.f_code.co_filename not in files:
            return None
        frame.f_trace_opcodes = True
        if event != "opcode":
            return tracer
        op = frame.f_code.co_code[frame.f_lasti]
        after_call, calls[id(frame)] = calls.get(id(frame), False), op in CALLS  # ids: holding frames would keep them alive
        if op in CALLS or op in CHECKS or (after_call and op != NOP):
            seen += 1
            if seen == step:
                signal.raise_signal(signal.SIGINT)  # the handler runs here, in the traced frame's thread
        return tracer

    interrupted = False
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.settrace(tracer)
    try:
        action()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        sys.settrace(None)
        signal.signal(signal.SIGINT, previous)
    return interrupted, seen


def every_instant(action: Callable[[], None], check: Callable[[bool], None], limit: int = 20000) -> int:
    """Interrupt ``action`` at each instruction in turn until it runs to its end uninterrupted; check each outcome."""
    step = 1
    while step < limit:
        interrupted, seen = interrupt_at(step, action)
        check(interrupted)
        if seen < step:  # the run ended before reaching this step: every instant has been tried
            assert not interrupted
            return step - 1
        step += 1
    raise AssertionError(f"the write took more than {limit} instructions")


def isolated(scenario: Callable[[Path], None], tmp_path: Path) -> None:
    """Run a scenario of this file in a fresh interpreter; its assertion errors fail the test with their output."""
    import subprocess

    code = ("import importlib.util, pathlib, sys\n"
            "spec = importlib.util.spec_from_file_location('scenarios', sys.argv[1])\n"
            "module = importlib.util.module_from_spec(spec)\n"
            "sys.path.insert(0, str(pathlib.Path(sys.argv[1]).parent))\n"
            "spec.loader.exec_module(module)\n"
            "getattr(module, sys.argv[2])(pathlib.Path(sys.argv[3]))\n")
    done = subprocess.run([sys.executable, "-c", code, __file__, scenario.__name__, str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def sigint_raises():
    """SIGINT at Python's default handler (KeyboardInterrupt) for the test, whatever this process inherited: a
    shell starts background jobs with SIGINT ignored, and a test run started so would otherwise see SIG_IGN."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def scenario_a_sigint_at_every_instruction_of_an_atomic_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "best.safetensors"
    target.write_bytes(b"old")
    outcomes = set()

    def check(interrupted: bool) -> None:
        assert leftovers(tmp_path) == [], leftovers(tmp_path)
        content = target.read_bytes()
        assert content in (b"old", b"new" * 1000)
        if not interrupted:
            assert content == b"new" * 1000
        outcomes.add((interrupted, content == b"old"))
        target.write_bytes(b"old")

    steps = every_instant(lambda: write_bytes(target, b"new" * 1000), check)
    assert steps > 100, steps  # the trace really covered the writer
    assert (True, True) in outcomes and (False, False) in outcomes, outcomes


def scenario_a_sigint_at_every_instruction_of_a_failed_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    """The caller's writer raises; Ctrl-C may land before, during or after the clean-up."""
    target = tmp_path / "metrics.json"

    def failing() -> None:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise ValueError("the writer failed")

    def check(interrupted: bool) -> None:
        assert list(tmp_path.iterdir()) == []

    def action() -> None:
        with pytest.raises(ValueError):
            failing()

    every_instant(action, check)


def scenario_a_sigint_at_every_instruction_of_a_staging_folder_leaves_nothing_half_written(tmp_path: Path) -> None:
    target = tmp_path / "exported"

    def build() -> None:
        with staging_folder(target) as staging:
            (staging / "config.json").write_text("{}")
            os.replace(staging, target)

    def check(interrupted: bool) -> None:
        assert leftovers(tmp_path) == [], leftovers(tmp_path)
        if target.exists():
            assert sorted(p.name for p in target.iterdir()) == ["config.json"]
            if interrupted:
                shutil.rmtree(target)
        else:
            assert interrupted

    every_instant(build, check)


def scenario_a_sigint_at_every_instruction_of_a_scratch_file_leaves_nothing_named(tmp_path: Path) -> None:
    def make() -> None:
        scratch_file(tmp_path).close()

    def check(interrupted: bool) -> None:
        assert list(tmp_path.iterdir()) == []

    every_instant(make, check)


def scenario_a_sigint_at_every_instruction_of_a_deferred_block_leaves_each_signal_its_own_handler(tmp_path: Path) -> None:
    """Ctrl-C may cut the block's restoring of the two handlers short; the next SIGTERM still reaches its own."""
    received: list[int] = []
    signal.signal(signal.SIGTERM, lambda number, _frame: received.append(number))

    def block() -> None:
        with signals_deferred():
            signal.raise_signal(signal.SIGTERM)  # held, then delivered when the block ends

    def check(interrupted: bool) -> None:
        if not interrupted:
            assert received == [signal.SIGTERM], received
        received.clear()
        signal.raise_signal(signal.SIGTERM)
        assert received == [signal.SIGTERM], "a SIGTERM after the block did not reach its handler"
        received.clear()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)

    assert every_instant(block, check) > 20


def test_a_sigint_at_every_instruction_of_an_atomic_write_leaves_no_temporary_file(tmp_path):
    isolated(scenario_a_sigint_at_every_instruction_of_an_atomic_write_leaves_no_temporary_file, tmp_path)


def test_a_sigint_at_every_instruction_of_a_failed_write_leaves_no_temporary_file(tmp_path):
    isolated(scenario_a_sigint_at_every_instruction_of_a_failed_write_leaves_no_temporary_file, tmp_path)


def test_a_sigint_at_every_instruction_of_a_staging_folder_leaves_nothing_half_written(tmp_path):
    isolated(scenario_a_sigint_at_every_instruction_of_a_staging_folder_leaves_nothing_half_written, tmp_path)


def test_a_sigint_at_every_instruction_of_a_scratch_file_leaves_nothing_named(tmp_path):
    isolated(scenario_a_sigint_at_every_instruction_of_a_scratch_file_leaves_nothing_named, tmp_path)


def test_a_sigint_at_every_instruction_of_a_deferred_block_leaves_each_signal_its_own_handler(tmp_path):
    isolated(scenario_a_sigint_at_every_instruction_of_a_deferred_block_leaves_each_signal_its_own_handler, tmp_path)


def test_a_block_closed_late_leaves_alone_the_handler_of_the_block_running_now(sigint_raises):
    """A block left open (its generator closed later by the garbage collector) cannot take SIGINT from another.

    The order of a failure seen once in a full run: a block opened inside another is left open, the outer one
    ends, a new block runs, and the forgotten block is closed (collected) while the new one holds a Ctrl-C.
    """
    outer = signals_deferred()
    outer.__enter__()
    forgotten = signals_deferred()
    forgotten.__enter__()
    outer.__exit__(None, None, None)
    order = []
    with pytest.raises(KeyboardInterrupt):
        with signals_deferred():
            forgotten.gen.close()  # what the garbage collector does to a suspended generator
            signal.raise_signal(signal.SIGINT)
            order.append("block ran to its end")
    assert order == ["block ran to its end"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)


def test_signals_deferred_delivers_a_held_sigint_after_the_block(sigint_raises):
    order = []
    with pytest.raises(KeyboardInterrupt):
        with signals_deferred():
            signal.raise_signal(signal.SIGINT)
            order.append("block ran to its end")
    assert order == ["block ran to its end"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_signals_deferred_delivers_a_held_sigterm_to_its_python_handler():
    received = []
    previous = signal.signal(signal.SIGTERM, lambda number, _frame: received.append(number))
    try:
        with signals_deferred():
            signal.raise_signal(signal.SIGTERM)
            assert received == []
        assert received == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_stale_temp_files_finds_the_writers_temporary_names(tmp_path):
    """The names the writer uses are the ones a resumed run sweeps up after kill -9."""
    with atomic_path(tmp_path / "x.json") as tmp:
        assert tmp.name.startswith(".x.json.") and tmp.name.endswith(TEMP_SUFFIX)
        tmp.write_text("{}")
        assert stale_temp_files(tmp_path) == [tmp]
    assert stale_temp_files(tmp_path) == []


@pytest.mark.parametrize("number, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_while_a_command_writes_leaves_nothing_and_says_one_line(tmp_path, number, code):
    """A real command stopped mid-write: one line, its exit code, and no temporary folder or file left."""
    import subprocess
    import time

    from conftest import sigint_as_in_a_terminal

    out = tmp_path / "data" / "synth"
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "AVGEN_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen([sys.executable, "-m", "avgen", "data", "synth", str(out), "--videos", "5000"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=sigint_as_in_a_terminal)
    try:
        deadline = time.monotonic() + 120
        while not any(p.name.startswith(".synth.") for p in out.parent.glob("*")) if out.parent.exists() else True:
            assert proc.poll() is None and time.monotonic() < deadline, "the command never started writing"
            time.sleep(0.05)
        time.sleep(0.3)  # well inside the writing of 5000 videos
        proc.send_signal(number)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == code, err
    assert lines and lines[-1].startswith("interrupted"), err
    assert "Traceback" not in err
    assert sorted(p.name for p in out.parent.iterdir()) == [], "a half-written dataset was left"
