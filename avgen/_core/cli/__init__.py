"""The ``avgen`` command: the group, its one-line errors and the entry point; each command in its own module.

Plugins add commands through the ``register_commands(cli)`` hook; they are loaded only
when a command that is not built in is asked for. ``avgen --help``, ``list`` and ``show``
read the component index (``avgen/_core/index.py``), so they import no plugin and no torch.
"""

from __future__ import annotations

import signal
import sys
import traceback
from contextlib import contextmanager
from typing import Any, Iterator

import click
from rich.markup import escape

from avgen import __version__
from avgen._core.console import make_console
from avgen._core.errors import AvgenError

console = make_console()
err_console = make_console(stderr=True)

_BUILTIN = {"list", "show", "run", "recipes", "cache", "generate"}


class AvgenGroup(click.Group):
    """A click group that pulls plugin commands in on first need; --help lists them from the component index."""

    _plugins_loaded = False
    _listing = False  # formatting --help: a plugin command's help text is enough
    _stand_ins: dict[str, click.Command] | None = None

    def _load_plugin_commands(self) -> None:
        if not AvgenGroup._plugins_loaded:
            AvgenGroup._plugins_loaded = True
            from avgen._core.plugins import register_commands

            register_commands(self)

    def _indexed_commands(self) -> dict[str, click.Command]:
        """Stand-ins (name and help only) for the plugin commands, from the component index."""
        if AvgenGroup._stand_ins is None:
            from avgen._core.index import component_index

            AvgenGroup._stand_ins = {
                c.name: click.Command(c.name, help=c.help, short_help=c.short_help, hidden=c.hidden,
                                      deprecated=c.deprecated)
                for c in component_index().commands if c.name not in _BUILTIN}
        return AvgenGroup._stand_ins

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in _BUILTIN:
            if AvgenGroup._listing and not AvgenGroup._plugins_loaded and name in self._indexed_commands():
                return self._indexed_commands()[name]
            self._load_plugin_commands()
        return super().get_command(ctx, name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        if AvgenGroup._plugins_loaded:
            return super().list_commands(ctx)
        return sorted(set(super().list_commands(ctx)) | set(self._indexed_commands()))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of --help, without importing the plugins that add commands."""
        AvgenGroup._listing = True
        try:
            super().format_commands(ctx, formatter)
        finally:
            AvgenGroup._listing = False

    def invoke(self, ctx: click.Context) -> Any:
        """Every command's AvgenError / pydantic error becomes one line and exit 2 (also under CliRunner)."""
        with _one_line_errors(ctx):
            return super().invoke(ctx)


@click.group(cls=AvgenGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="avgen")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """avgen: generate the sound a video shows (POCAN, Owens et al.) with pluggable components."""
    ctx.ensure_object(dict)["debug"] = debug


THREADS_OPTION = click.option(
    "--threads", type=click.IntRange(0, 1024), default=0, show_default=True,
    help="CPU threads for torch (0: the cores avgen may use, divided among torchrun ranks); "
         "avgen run's --workers processes use one each (docs/reliability.md).")


class UserError(click.ClickException):
    """A user's mistake as click sees it: ``error: <one line>`` on stderr and exit code 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        err_console.print(f"[red]error:[/red] {escape(self.message)}", highlight=False, soft_wrap=True)


@contextmanager
def _one_line_errors(ctx: click.Context) -> Iterator[None]:
    """AvgenError and pydantic errors become a one-line UserError (also under click's CliRunner);
    ``avgen --debug`` keeps the original exception and its traceback."""
    from pydantic import ValidationError

    from avgen._core.registry import format_validation_error

    try:
        yield
    except (AvgenError, ValidationError) as exc:
        if (ctx.find_root().obj or {}).get("debug"):
            raise
        text = format_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)
        raise UserError(_single_line(text)) from exc


def _single_line(text: str) -> str:
    """The text with every line break (\\n, \\r, U+2028, ...) written as an escape, so it stays one line."""
    return "".join(repr(ch)[1:-1] if ch.splitlines() != [ch] else ch for ch in text)  # a break splits itself


# ---------------------------------------------------------------- entry point


INTERRUPTED = "interrupted; finished stages and checkpoints are kept, rerun the same command to resume"  # avgen run


def _interrupted_line(args: list[str]) -> str:
    """The line for Ctrl-C: only `avgen run` resumes where it stopped (the same command, less a --fresh that would
    start it over again); the other commands start over."""
    command = next((arg for arg in args if not arg.startswith("-")), None)
    if command != "run":
        return "interrupted"
    return INTERRUPTED.replace("the same command", "the same command without --fresh") if "--fresh" in args else INTERRUPTED


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, timeout, a scheduler, docker stop), raised where Ctrl-C would be so the same clean-up runs."""


def _terminate(_signum: int, _frame: Any) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors print one line and exit 2 (``--debug`` shows the traceback)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    with _sigterm_as_interrupt():
        _main(args, debug)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the command as Ctrl-C does (temporary files removed, one line), unless a handler is set."""
    try:
        replace = signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        if replace:
            signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread
        replace = False
    try:
        yield
    finally:
        if replace:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def print_plugin_tracebacks() -> None:
    """For ``avgen --debug``: where each plugin that failed to load failed (its file and line), on stderr."""
    from avgen._core.plugins import broken_plugins, failure_traceback

    for info in broken_plugins():
        where = failure_traceback(info)
        if where:
            print(f"\n{info.failure}\n{where}", file=sys.stderr)


def _main(args: list[str], debug: bool) -> None:
    from avgen._core.threads import prefer_passive_wait

    prefer_passive_wait()  # before anything imports torch (docs/reliability.md, "Threads")
    try:
        code = cli.main(args=args, prog_name="avgen", standalone_mode=False)
        if isinstance(code, int) and code != 0:  # click returns ctx.exit(code) instead of exiting
            sys.exit(code)
    except click.exceptions.Abort as exc:
        if isinstance(exc.__context__, KeyboardInterrupt):  # click turns Ctrl-C into Abort
            err_console.print(_interrupted_line(args), soft_wrap=True)
        else:
            err_console.print("aborted")
        sys.exit(143 if isinstance(exc.__context__, Terminated) else 130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        err_console.print(_interrupted_line(args), soft_wrap=True)
        sys.exit(143 if isinstance(exc, Terminated) else 130)
    except AvgenError as exc:
        if debug:
            traceback.print_exc()
            print_plugin_tracebacks()
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug, not bad input: keep one line unless --debug
        if debug:
            raise
        err_console.print(f"[red]internal error:[/red] {type(exc).__name__}: {escape(str(exc))} (rerun with --debug for the traceback)",
                          highlight=False, soft_wrap=True)
        sys.exit(1)


from avgen._core.cli import cache, components, generate, recipes, run  # noqa: E402,F401  (each registers its commands on `cli`)
