"""The look of avgen's console output shared by the stages and the CLI.

Long work shows a rich progress bar on a terminal. Where there is no terminal (a run started in
the background, under a scheduler or with its output in a file) a bar is never drawn, so
``LoggedProgress`` also writes a plain line (done/total, rate, ETA) at most every
``AVGEN_PROGRESS_SECONDS`` (30) seconds and when a task ends: to the console when it is not a
terminal, and always to the ``avgen`` logger, which a run sends to its ``log.txt``.

Every console avgen prints to is an ``AvgenConsole``: on a terminal it is rich's, elsewhere (a file, a
pipe, a CI log) its lines are not wrapped at 80 columns, so tables keep their width and words are not
folded ("POCAN (res+sp ec)").
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from rich.console import Console, ConsoleDimensions
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TaskID, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

log = logging.getLogger("avgen.progress")
DEFAULT_SECONDS = 30.0
UNWRAPPED_WIDTH = 200  # columns of a console that is not a terminal: wide tables fit (rich renders progress
# at the full width: 10 000 made the quickstart 30 % slower with its output in a file, 400 12 %)
RULE_WIDTH = 80  # a stage's rule ("──── fit ────") on such a console


class AvgenConsole(Console):
    """rich's Console, except where the output is not a terminal and ``COLUMNS`` is not set: rich would wrap
    at 80 columns there; this console does not wrap (tables at their natural width, rules 80 wide)."""

    def _unwrapped(self) -> bool:
        columns = self._environ.get("COLUMNS")
        return self._width is None and not self.is_terminal and not (columns and columns.isdigit())

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        return ConsoleDimensions(UNWRAPPED_WIDTH, size.height) if self._unwrapped() else size

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size

    def rule(self, title: Any = "", **kwargs: Any) -> None:
        if not self._unwrapped():
            super().rule(title, **kwargs)
            return
        from rich.rule import Rule

        self.print(Rule(title, **kwargs), width=RULE_WIDTH)


def make_console(**kwargs: Any) -> AvgenConsole:
    """The console every avgen command prints to (``stderr=True`` for messages and progress)."""
    return AvgenConsole(**kwargs)


def progress_seconds() -> float:
    """Seconds between plain progress lines ($AVGEN_PROGRESS_SECONDS, default 30)."""
    try:
        return max(0.0, float(os.environ.get("AVGEN_PROGRESS_SECONDS", DEFAULT_SECONDS)))
    except ValueError:
        return DEFAULT_SECONDS


class LoggedProgress(Progress):
    """A rich Progress that also writes plain progress lines for logs and non-terminal consoles."""

    def __init__(self, *columns: str | ProgressColumn, every: float | None = None, end_lines: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(*columns, **kwargs)
        self.every = progress_seconds() if every is None else every
        self.end_lines = end_lines  # a line when a task ends (off where the caller prints its own, e.g. epochs)
        self._last: dict[TaskID, float] = {}
        self._ended: set[TaskID] = set()

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._line(task_id)

    def update(self, task_id: TaskID, **kwargs: Any) -> None:
        super().update(task_id, **kwargs)
        self._line(task_id)

    def reset(self, task_id: TaskID, **kwargs: Any) -> None:
        super().reset(task_id, **kwargs)
        self._last[task_id] = time.monotonic()
        self._ended.discard(task_id)

    def add_task(self, description: str, *args: Any, **kwargs: Any) -> TaskID:
        task_id = super().add_task(description, *args, **kwargs)
        self._last[task_id] = time.monotonic()
        return task_id

    def _line(self, task_id: TaskID) -> None:
        if self.disable:
            return
        task = self._tasks[task_id]
        now = time.monotonic()
        ended = task.total is not None and task.completed >= task.total
        if ended and (task_id in self._ended or not self.end_lines):
            return
        if not ended and now - self._last.get(task_id, now) < self.every:
            return
        self._last[task_id] = now
        if ended:
            self._ended.add(task_id)
        line = progress_line(task.description, task.completed, task.total, task.elapsed or 0.0)
        log.info("%s", line)
        if not self.console.is_terminal:
            self.console.print(line, markup=False, highlight=False)


def progress_line(description: str, done: float, total: float | None, elapsed: float) -> str:
    """'featurize train: 120/348 (34 %), 9.8/s, 12 s elapsed, ETA 23 s' (no total: no share or ETA)."""
    rate = done / elapsed if elapsed > 0 else 0.0
    parts = [f"{description}: {done:g}" + (f"/{total:g} ({100 * done / total:.0f} %)" if total else "")]
    parts.append(f"{rate:.3g}/s")
    parts.append(f"{elapsed:.0f} s elapsed")
    if total and done < total:
        parts.append(f"ETA {(total - done) / rate:.0f} s" if rate > 0 else "ETA unknown")
    return ", ".join(parts)


def progress_bar(console: Console) -> LoggedProgress:
    """The progress bar style used by every long stage."""
    return LoggedProgress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
    )
