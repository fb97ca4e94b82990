"""Where avgen keeps user-level files: weights and the feature cache."""

from __future__ import annotations

import os
from pathlib import Path

from avgen._core.atomic import folder_error


def avgen_home() -> Path:
    """``$AVGEN_HOME`` or ``~/.cache/avgen``; created on first use."""
    home = Path(os.environ.get("AVGEN_HOME") or Path.home() / ".cache" / "avgen").expanduser()
    fix = "AVGEN_HOME points there: set it" if os.environ.get("AVGEN_HOME") else "set AVGEN_HOME"
    return _folder(home, "the avgen home folder", f"{fix} to a writable folder")


def weights_dir() -> Path:
    """Converted pretrained weights (safetensors), one file per model."""
    return _folder(avgen_home() / "weights", "the weights folder",
                   "it is $AVGEN_HOME/weights: make it a writable folder or set AVGEN_HOME to another folder")


def cache_dir() -> Path:
    """The content-addressed feature cache (``$AVGEN_CACHE`` overrides)."""
    if os.environ.get("AVGEN_CACHE"):
        return _folder(Path(os.environ["AVGEN_CACHE"]).expanduser(), "the cache folder",
                       "AVGEN_CACHE points there: set it to a writable folder, or unset it to use $AVGEN_HOME/cache")
    return _folder(avgen_home() / "cache", "the cache folder",
                   "it is $AVGEN_HOME/cache: make it a writable folder or set AVGEN_CACHE to one")


def _folder(path: Path, what: str, fix: str) -> Path:
    """``path``, created if missing; one-line AvgenError naming ``what`` when it cannot be (a file there, read-only)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise folder_error(path, what, exc, fix) from exc
    return path
