"""Where avgen keeps user-level files: weights and the feature cache."""

from __future__ import annotations

import os
from pathlib import Path


def avgen_home() -> Path:
    """``$AVGEN_HOME`` or ``~/.cache/avgen``; created on first use."""
    home = Path(os.environ.get("AVGEN_HOME") or Path.home() / ".cache" / "avgen").expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


def weights_dir() -> Path:
    """Converted pretrained weights (safetensors), one file per model."""
    path = avgen_home() / "weights"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    """The content-addressed feature cache (``$AVGEN_CACHE`` overrides)."""
    path = Path(os.environ.get("AVGEN_CACHE") or avgen_home() / "cache").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path
