"""Cache entries that several processes want at once, each made by one of them.

The variants of a recipe finish side by side (`avgen run --jobs`), each in its own process, and all of them fit the
same detector on the same training videos and read the same test clips for ``av_sync``. Before, each process made
every entry that was missing when it looked, so two processes did the same work at the same time. ``make_each``
lets them share it: an entry is claimed with a lock file beside it (created exclusively, holding the host and process
id), a process makes the entries it could claim and then waits for the ones others hold. A lock whose process is
gone (killed) is taken over; an entry whose maker failed is made by the waiter.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from avgen import atomic_path

POLL_SECONDS = 0.05
OLD_LOCK_SECONDS = 3600.0  # a lock older than this is taken over (another host's, in a shared cache folder; a reused id)


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _owner() -> str:
    return f"{socket.gethostname()} {os.getpid()}"


def _claim(lock: Path) -> bool:
    """Create ``lock`` if no one holds it; True when this process now does."""
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(_owner())
    return True


def _abandoned(lock: Path) -> bool:
    """Whether ``lock`` was left by a process of this host that is gone, or is older than ``OLD_LOCK_SECONDS``."""
    try:
        host, pid = lock.read_text(encoding="utf-8").rsplit(" ", 1)
        age = time.time() - lock.stat().st_mtime
    except (OSError, ValueError):
        return False  # being written or just removed: look again
    if age > OLD_LOCK_SECONDS:
        return True
    if host != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False


def _make(path: Path, lock: Path, make: Callable[[Path], None]) -> None:
    try:
        if not path.is_file():  # made by another process between the look and the claim
            with atomic_path(path) as tmp:
                make(tmp)
    finally:
        lock.unlink(missing_ok=True)


def make_each(paths: list[Path], make: Callable[[int, Path], None]) -> None:
    """Make every missing file of ``paths``: ``make(i, tmp)`` writes the i-th to ``tmp`` (renamed into place).

    Another process making the same files at the same time makes those it claimed first; this one makes the
    rest, then waits for the others' (or makes them itself where their maker died or failed)."""
    waiting = []
    for i, path in enumerate(paths):
        if path.is_file():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = lock_path(path)
        if _claim(lock):
            _make(path, lock, lambda tmp, i=i: make(i, tmp))
        else:
            waiting.append(i)
    for i in waiting:
        path, lock = paths[i], lock_path(paths[i])
        while not path.is_file():
            if _claim(lock) or (_abandoned(lock) and _take_over(lock)):
                _make(path, lock, lambda tmp, i=i: make(i, tmp))
                break
            time.sleep(POLL_SECONDS)


def _take_over(lock: Path) -> bool:
    lock.unlink(missing_ok=True)
    return _claim(lock)


def make_once(path: Path, make: Callable[[Path], None]) -> None:
    """``make_each`` for one file."""
    make_each([path], lambda _, tmp: make(tmp))
