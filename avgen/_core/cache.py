"""Content-addressed feature cache: tensors keyed by a hash of everything that produced them.

Entries are safetensors files written atomically (temp file + rename), so concurrent runs
can share the cache and a half-written entry is never read: a file that fails to load, or whose
tensors no longer match the SHA-256 stored in it, is treated as a miss, removed and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
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
