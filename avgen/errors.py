"""User-facing errors: one line, naming the thing, the bad value and the fix."""

from __future__ import annotations


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
