"""User-facing errors: one line, naming the thing, the bad value and the fix."""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator

SHOWN_CHARS = 80  # a value echoed in an error is cut to this many characters

_resumes: contextvars.ContextVar[bool] = contextvars.ContextVar("avgen_resumes", default=False)


class AvgenError(Exception):
    """An error caused by the user's input; the CLI prints it on one line and exits 2."""

    exit_code = 2


class UnknownComponentError(AvgenError, KeyError):
    """A component name that no plugin registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DuplicateComponentError(AvgenError):
    """Two plugins registered the same kind and name."""


class RecipeError(AvgenError):
    """A recipe that cannot be loaded or validated."""


class RunLockedError(AvgenError):
    """Another process holds the run directory."""


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` for an error message, cut to about ``limit`` characters: a 100 KB ``--set`` value is
    echoed as its start, an ellipsis and its length, so the error stays one readable line."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(value) if isinstance(value, str) else len(text)} characters)"


def cut(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text`` (a key, a name) as ``shown`` cuts a value, without quotes."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


@contextlib.contextmanager
def resumable() -> Iterator[None]:
    """Mark the work inside as resumed by running the same command again (``avgen run``): its write errors say so."""
    token = _resumes.set(True)
    try:
        yield
    finally:
        _resumes.reset(token)


def rerun_hint() -> str:
    """How to go on once the cause is fixed: 'rerun the same command to resume' inside ``resumable()``, else
    'rerun the command' (generate, compare, export start over; they leave no half-written output to resume from)."""
    return "rerun the same command to resume" if _resumes.get() else "rerun the command"
