"""Atomic file writes: write to a temporary file beside the target, fsync, then rename.

A crash, kill -9 or full disk leaves either the old file or the new one, never half of one.
A write that fails (disk full, read-only folder, quota) removes its temporary file and raises
``AvgenError`` naming the path, so the CLI prints one line and the previous file stays intact.
Ctrl-C (SIGINT) or SIGTERM at any instant leaves no temporary file either: the steps that create,
rename or remove one run with those signals held back (``signals_deferred``), and the guard that
removes it is in place before it exists.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

from avgen._core.errors import AvgenError, rerun_hint

TEMP_SUFFIX = ".tmp"  # temporary files are ".<target name>.<random>.tmp" beside the target

# Reasons shown for OS errors while writing; the first four only ever come from writes.
_REASONS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EFBIG: "file too large",
            errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.EIO: "I/O error",
            errno.EPERM: "operation not permitted", errno.EEXIST: "it is a file, not a folder",
            errno.ENOTDIR: "part of its path is a file, not a folder", errno.EISDIR: "it is a folder, not a file"}
_WRITE_ONLY_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


class WriteError(AvgenError):
    """A file could not be written (disk full, no permission, read-only file system)."""


@functools.cache
def umask() -> int:
    """The process's umask, read once without changing it (Linux /proc; elsewhere set and restored once)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)  # process-global: done once, at the first write
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new file gets from ``open`` under the umask (mkstemp's files are 0600)."""
    return 0o666 & ~umask()


def folder_mode() -> int:
    """The mode a new folder gets from ``mkdir`` under the umask (mkdtemp's folders are 0700)."""
    return 0o777 & ~umask()


DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _deliver(number: int, handler: Any) -> None:
    """Deliver signal ``number`` to ``handler`` as the OS would have: a Python handler, else the default action."""
    if callable(handler):
        handler(number, None)  # e.g. KeyboardInterrupt from Python's default SIGINT handler
    elif handler != signal.SIG_IGN:
        signal.raise_signal(number)  # the default action (SIGTERM ends the process)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back for the block, then deliver them to the previous handlers (main thread only).

    Python raises ``KeyboardInterrupt`` at any bytecode boundary; a short step that must not be cut in half
    (create a temporary file *and* record its name, rename it into place) runs inside this block.
    A block's handler never outlives it: if a signal cuts its restoring short, the handler left installed
    passes the next signal on to the handler it replaced; and a block that ends late (a generator closed by
    the garbage collector) leaves alone the handlers that others installed since.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread receives Python-level signals
        return
    held: list[int] = []
    previous: dict[int, Any] = {}
    active = [True]

    def hold(number: int, _frame: Any) -> None:
        if active[0]:
            held.append(number)
            return
        if signal.getsignal(number) is hold:  # the block is over: stand down, then act as the handler it replaced
            signal.signal(number, previous[number])
        _deliver(number, previous[number])

    try:
        for number in DEFERRED_SIGNALS:
            previous[number] = signal.signal(number, hold)
        yield
    finally:
        active[0] = False
        for number, handler in previous.items():
            if signal.getsignal(number) is hold:  # not one that a later block or the program installed since
                signal.signal(number, handler)
        for number in dict.fromkeys(held):
            _deliver(number, previous[number])


def _remove(path: Path, tries: int = 3) -> None:
    """Remove a file or folder; a folder is tried again while something still adds to it (a writer ending)."""
    for _ in range(tries):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        if not os.path.lexists(path):
            return


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path; on success it replaces ``path`` atomically, on error it is removed."""
    path = Path(path)
    tmp_path: Path | None = None
    try:
        with signals_deferred():  # the file and its name in tmp_path come into being together
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
                tmp_path = Path(tmp)
                os.close(fd)
            except OSError as exc:
                raise write_error(path, exc) from exc
        try:
            yield tmp_path
        except OSError as exc:  # raised by the caller's writer; a read error of some input passes through
            if exc.errno in _WRITE_ONLY_ERRNOS or exc.filename in (str(tmp_path), tmp_path):
                raise write_error(path, exc) from exc
            raise
        try:
            os.chmod(tmp_path, file_mode())  # as any other tool's output, not mkstemp's 0600
            with open(tmp_path, "rb+") as f:
                os.fsync(f.fileno())
            with signals_deferred():  # renamed and forgotten together
                os.replace(tmp_path, path)
                tmp_path = None
        except OSError as exc:
            raise write_error(path, exc) from exc
    finally:
        interrupted = None
        while tmp_path is not None:  # inline, not a call: Python delivers signals on entering a function
            try:
                _remove(tmp_path)
                tmp_path = None
            except KeyboardInterrupt as exc:  # Ctrl-C during the clean-up: finish it, then pass it on
                interrupted = exc
        if interrupted is not None:
            raise interrupted
    _fsync_folder(path.parent)


class staging_folder:  # noqa: N801  (used as a function: ``with staging_folder(target) as staging``)
    """A new empty folder beside ``target`` (mode as mkdir gives), removed on leaving unless it was renamed away.

    Build a folder's content in it, then ``os.replace`` it onto ``target``: a crash, a failed write or
    Ctrl-C at any instant leaves no half-written folder (``.<name>.<random><suffix>`` at worst after kill -9).
    A class, not a generator: contextlib's ``__enter__`` can take a Ctrl-C after the folder exists and before
    the ``with`` block holds it; here a Ctrl-C held back during the creation is delivered inside ``__enter__``,
    which removes the folder first.
    """

    def __init__(self, target: str | os.PathLike[str], suffix: str = TEMP_SUFFIX) -> None:
        self.target, self.suffix = Path(target), suffix
        self.path: Path | None = None

    def __enter__(self) -> Path:
        try:
            with signals_deferred():
                try:
                    self.target.parent.mkdir(parents=True, exist_ok=True)
                    self.path = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", suffix=self.suffix,
                                                      dir=self.target.parent))
                    os.chmod(self.path, folder_mode())  # as mkdir would make it, not mkdtemp's 0700
                except OSError as exc:
                    raise folder_error(self.target, "the folder", exc,
                                       "choose another folder or fix its permissions") from exc
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self.path

    def __exit__(self, *exc_info: Any) -> None:
        interrupted = None
        while self.path is not None:  # as in atomic_path
            try:
                _remove(self.path)
                self.path = None
            except KeyboardInterrupt as exc:
                interrupted = exc
        if interrupted is not None:
            raise interrupted


def write_error(path: Path, exc: OSError) -> WriteError:
    """The one-line error for an OS error while writing ``path`` (the CLI prints it, exit 2)."""
    reason = _REASONS.get(exc.errno or 0, "write failed")
    detail = exc.strerror or str(exc)
    return WriteError(f"cannot write {path}: {reason} ({detail}); the previous file, if any, is kept; "
                      f"free space or fix the folder's permissions, then {rerun_hint()}")


def folder_error(folder: Path, what: str, exc: OSError, fix: str) -> WriteError:
    """The one-line error for a folder that cannot be created or written: names ``what`` and ``folder``, then ``fix``."""
    reason = _REASONS.get(exc.errno or 0, "cannot create or write it")
    where = f": {exc.filename}" if exc.filename is not None and Path(exc.filename) != Path(folder) else ""
    return WriteError(f"cannot write {what} {folder}: {reason} ({exc.strerror or exc}{where}); {fix}")


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (best effort: some file systems refuse to fsync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def stale_temp_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Temporary files under ``folder`` left by a process killed mid-write (``.<name>.<random>.tmp``)."""
    return sorted(p for p in Path(folder).rglob(f".*{TEMP_SUFFIX}") if p.is_file())


def remove_stale_temp_files(folder: str | os.PathLike[str]) -> int:
    """Delete the leftovers of killed writers; call only while no other process writes there (a held run lock)."""
    found = stale_temp_files(folder) if Path(folder).is_dir() else []
    for path in found:
        path.unlink(missing_ok=True)
    return len(found)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
