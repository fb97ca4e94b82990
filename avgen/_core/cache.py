"""Content-addressed feature cache: tensors keyed by a hash of everything that produced them.

Entries are safetensors files written atomically (temp file + rename), so concurrent runs
can share the cache and a half-written entry is never read: a file that fails to load, or whose
tensors no longer match the SHA-256 stored in it, is treated as a miss, removed and rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import save as safetensors_bytes

from avgen._core.atomic import TEMP_SUFFIX, atomic_path, write_json
from avgen._core.paths import cache_dir
from avgen._core.tensorfile import DIGEST_KEY, map_verified, read_verified, tensor_digest

log = logging.getLogger("avgen.cache")
NOTES = "notes"  # the folder of small JSON records (FeatureCache.note), beside the <key[:2]>/ entry folders


def cache_key(*parts: Any) -> str:
    """SHA-256 of the canonical JSON of ``parts`` (dicts sorted, paths as strings)."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class FeatureCache:
    """A folder of ``<key[:2]>/<key>.safetensors`` entries."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else cache_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def get(self, key: str, mapped: bool = False) -> dict[str, torch.Tensor] | None:
        """The tensors stored under key, or None (a corrupt entry is removed and counts as a miss).

        ``mapped``: views of a read-only memory map of the file instead of tensors in RAM.
        """
        path = self.path(key)
        if not path.is_file():
            self.misses += 1
            return None
        reader = map_verified if mapped else read_verified
        try:
            tensors, _ = reader(path)
        except Exception as exc:  # truncated, damaged or foreign file: rebuild it
            log.warning("cache entry %s is unreadable (%s); rebuilding it", path, exc)
            path.unlink(missing_ok=True)
            self.misses += 1
            return None
        self.hits += 1
        return tensors

    def put(self, key: str, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str] | None = None) -> Path:
        """Store tensors under key atomically; returns the entry's path."""
        path = self.path(key)
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        data = safetensors_bytes(tensors, metadata={**(meta or {}), DIGEST_KEY: tensor_digest(tensors)})
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)  # a Python write, so a full disk is an OSError that atomic_path reports
        return path

    def note(self, key: str) -> dict[str, Any] | None:
        """A small JSON record kept under key (e.g. a check's result, not a tensor entry), or None."""
        try:
            record = json.loads((self.root / NOTES / f"{key}.json").read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def put_note(self, key: str, record: Mapping[str, Any]) -> None:
        """Keep a small JSON record under key (atomically; ``cache clear`` removes it with the entries)."""
        write_json(self.root / NOTES / f"{key}.json", dict(record))

    def info(self) -> dict[str, Any]:
        """Number of entries, bytes used, and temporary files left by killed writers (``cache clear`` removes them)."""
        files = _sizes(self.root.glob("*/*.safetensors"))
        temps = _sizes(self.root.glob(f"*/.*{TEMP_SUFFIX}"))
        return {"root": str(self.root), "entries": len(files), "bytes": sum(files.values()), "temp_files": len(temps)}

    def clear(self) -> int:
        """Delete every entry; returns how many were removed."""
        count = 0
        for sub in self.root.iterdir():
            if sub.is_dir():
                count += sum(1 for _ in sub.glob("*.safetensors"))
                shutil.rmtree(sub, ignore_errors=True)
        return count


def _sizes(paths: Any) -> dict[Path, int]:
    """Size of each path that still exists (another process may remove an entry while we look)."""
    sizes = {}
    for path in paths:
        try:
            sizes[path] = path.stat().st_size
        except FileNotFoundError:
            continue
    return sizes


# ---------------------------------------------------------------------------------------------- entries made once
# Several processes may want the same entries at once: the runs of a command finishing side by side (`avgen run
# --jobs`) fit the same detector on the same videos, read the same test clips for av_sync and train the same sound
# classifier. ``make_each`` has each entry made by one of them: an entry is claimed with a lock file beside it
# (created exclusively, holding the host and process id, touched every HEARTBEAT_SECONDS while the making goes on); a
# process makes the entries it could claim, then waits for those others hold. A lock whose process is gone (killed) or
# that was not touched for OLD_LOCK_SECONDS is taken over; an entry whose maker failed is made by the waiter.

POLL_SECONDS = 0.05
HEARTBEAT_SECONDS = 30.0  # a maker touches its lock this often, however long the making takes
OLD_LOCK_SECONDS = 300.0  # a lock untouched this long is taken over (another host's, in a shared cache folder; a reused id)


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _owner() -> str:
    return f"{socket.gethostname()} {os.getpid()}"


def _claim(lock: Path) -> bool:
    """Create ``lock`` if no one holds it; True when this process now does (or no lock can be made there: the entry is
    made without one, and its write says why it fails where the folder is not writable)."""
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    except OSError:
        return True
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(_owner())
    return True


def _abandoned(lock: Path) -> bool:
    """Whether ``lock`` was left by a process of this host that is gone, or was not touched for ``OLD_LOCK_SECONDS``."""
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
    done = threading.Event()

    def heartbeat() -> None:  # the lock stays fresh while the making goes on, so no one takes it over
        while not done.wait(HEARTBEAT_SECONDS):
            try:
                os.utime(lock)
            except OSError:
                return

    beat = threading.Thread(target=heartbeat, daemon=True, name="avgen-cache-lock")
    beat.start()
    try:
        if not path.is_file():  # made by another process between the look and the claim
            with atomic_path(path) as tmp:
                make(tmp)
    finally:
        done.set()
        beat.join()
        with contextlib.suppress(OSError):  # gone, or never made (a folder where no lock can be made)
            lock.unlink()


def make_each(paths: list[Path], make: Callable[[int, Path], None]) -> None:
    """Make every missing file of ``paths``: ``make(i, tmp)`` writes the i-th to ``tmp`` (renamed into place).

    Another process making the same files at the same time makes those it claimed first; this one makes the
    rest, then waits for the others' (or makes them itself where their maker died or failed)."""
    waiting = []
    for i, path in enumerate(paths):
        if path.is_file():
            continue
        with contextlib.suppress(OSError):  # a folder that cannot be made: the entry's write says why
            path.parent.mkdir(parents=True, exist_ok=True)
        lock = lock_path(path)
        if _claim(lock):
            _make(path, lock, lambda tmp, i=i: make(i, tmp))
        else:
            waiting.append(i)
    started = time.monotonic()
    for i in waiting:
        path, lock = paths[i], lock_path(paths[i])
        while not path.is_file():
            if _claim(lock) or (_abandoned(lock) and _take_over(lock)):
                _make(path, lock, lambda tmp, i=i: make(i, tmp))
                break
            time.sleep(POLL_SECONDS)
    if waiting:
        log.info("%d of %d cache entries (%s, ...) were being made by another process; waited %.1f s for them",
                 len(waiting), len(paths), paths[waiting[0]].name, time.monotonic() - started)


def _take_over(lock: Path) -> bool:
    with contextlib.suppress(OSError):
        lock.unlink()
    return _claim(lock)


def make_once(path: Path, make: Callable[[Path], None]) -> None:
    """``make_each`` for one file."""
    make_each([path], lambda _, tmp: make(tmp))
