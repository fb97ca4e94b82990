"""Checks on the paths a command is told to write, made before any long work (loading a model, reading runs).

- ``check_outputs``: no output is one of the command's inputs (the same file, also through a link or a
  relative path), and no two outputs are the same file; ``avgen generate v.mp4 -o v.mp4`` would otherwise
  replace the video with its own output;
- ``check_writable``: a folder to write into (existing or still to be made) can be written; a file on its
  path, a folder without write permission or a read-only file system is one line now, and nothing is created;
- ``named_as``: errors raised while a folder is built under a staging name (``atomic.staging_folder``) name
  the folder the user asked for.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from avgen._core.atomic import folder_error
from avgen._core.errors import AvgenError


def file_identity(path: str | os.PathLike[str]) -> tuple:
    """What makes two paths the same file: device and inode of an existing file, else the resolved absolute path."""
    try:
        info = os.stat(path)
        return ("inode", info.st_dev, info.st_ino)
    except OSError:
        return ("path", str(Path(os.path.abspath(path)).resolve()))


def check_outputs(outputs: Iterable[tuple[Path, str]], inputs: Iterable[Path], fix: str) -> None:
    """AvgenError (one line, ending with ``fix``) when an output (path, what it is) is one of ``inputs`` or the
    same file as an earlier output."""
    sources = {file_identity(path): Path(path) for path in inputs}
    written: dict[tuple, str] = {}
    for path, what in outputs:
        identity = file_identity(path)
        if identity in sources:
            raise AvgenError(f"{path} ({what}) would overwrite the input {sources[identity]}; an output never replaces "
                             f"an input: {fix}")
        if identity in written:
            raise AvgenError(f"{path} would be written twice, as {written[identity]} and as {what}: {fix}")
        written[identity] = what


def check_writable(folder: str | os.PathLike[str], what: str, fix: str) -> None:
    """Raise ``folder_error`` (one line naming ``what`` and ``fix``) when ``folder`` cannot be created or written:
    a file where it or a folder on its path should be, no write permission, a read-only file system.

    Creates nothing: the nearest existing folder on the path gets a probe (a temporary folder made and removed at
    once), which is what the command's own writes would meet; root, whom permissions do not stop, passes where the
    write would pass."""
    folder = Path(folder)
    target = Path(os.path.abspath(folder))
    existing = target
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    where = str(folder) if existing == target else str(existing)  # named in the message when not the folder itself
    if not existing.is_dir():
        code = errno.EEXIST if existing == target else errno.ENOTDIR
        raise folder_error(folder, what, OSError(code, os.strerror(code), where), fix)
    try:
        probe = tempfile.mkdtemp(prefix=".avgen-probe-", dir=existing)
    except OSError as exc:
        raise folder_error(folder, what, OSError(exc.errno, exc.strerror, where), fix) from exc
    os.rmdir(probe)


@contextlib.contextmanager
def named_as(staging: str | os.PathLike[str], final: str | os.PathLike[str]) -> Iterator[None]:
    """An AvgenError raised inside that names ``staging`` (say, a full disk while a file is written there) names
    ``final`` instead: the user knows the folder they asked for, not its temporary name."""
    try:
        yield
    except AvgenError as exc:
        text = str(exc)
        if str(staging) not in text:
            raise
        try:
            renamed = type(exc)(text.replace(str(staging), str(final)))
        except Exception:  # an error class with other arguments
            renamed = AvgenError(text.replace(str(staging), str(final)))
        raise renamed from exc
