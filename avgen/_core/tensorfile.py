"""Safetensors files: the SHA-256 digest stored in them, verified reads, memory maps and row-wise writes.

``tensor_digest`` is recorded under ``DIGEST_KEY`` in the file's metadata; ``read_verified`` and
``map_verified`` refuse a file whose tensors no longer match it.
``map_safetensors`` returns views of a private (copy-on-write) map: the kernel reads pages on
demand and may drop them again under memory pressure, and writing to a view never changes the
file. ``RowWriter`` streams tensors of shape [rows, ...] into a safetensors file block by block,
so a split far larger than RAM can be written without holding it.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
import tempfile
from pathlib import Path
from typing import BinaryIO, Mapping

import torch
from safetensors import safe_open

from avgen._core.atomic import signals_deferred

DIGEST_KEY = "avgen_sha256"  # safetensors metadata key: tensor_digest() of the file's tensors

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}
NAMES = {dtype: name for name, dtype in DTYPES.items()}
_PLACEHOLDER = "0" * 64  # the digest is written last, in place of this


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes (in name order)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def read_verified(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; ValueError when its tensors do not match its stored digest."""
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    expected = meta.get(DIGEST_KEY)
    if expected is not None and tensor_digest(tensors) != expected:
        raise ValueError(f"its tensors do not match the SHA-256 recorded in it ({expected[:16]}...)")
    return tensors, meta


def map_safetensors(source: str | os.PathLike[str] | BinaryIO) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file (a path or an open binary file) as views of a private map.

    Raises ValueError for a file that is empty, truncated or not safetensors.
    """
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            return map_safetensors(f)
    size = os.fstat(source.fileno()).st_size
    if size < 8:
        raise ValueError(f"{size} bytes is too short for a safetensors file")
    buffer = mmap.mmap(source.fileno(), size, access=mmap.ACCESS_COPY)
    (header_len,) = struct.unpack("<Q", buffer[:8])
    if header_len > size - 8:
        raise ValueError(f"its header claims {header_len} bytes but the file has {size}")
    try:
        header = json.loads(bytes(buffer[8:8 + header_len]))
    except (UnicodeDecodeError, ValueError):
        raise ValueError("its header is not JSON") from None
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    data_start, data_len = 8 + header_len, size - 8 - header_len
    tensors, covered = {}, 0
    for name, spec in header.items():
        try:
            dtype, shape, (begin, end) = DTYPES[spec["dtype"]], [int(n) for n in spec["shape"]], spec["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"tensor '{name}' has a malformed header entry") from None
        count = 1
        for n in shape:
            count *= n
        if not 0 <= begin <= end <= data_len or end - begin != count * dtype.itemsize:
            raise ValueError(f"tensor '{name}' lies outside the file (truncated?): bytes {begin}..{end} of {data_len}")
        covered += end - begin
        if count == 0:
            tensors[name] = torch.empty(shape, dtype=dtype)
        else:
            tensors[name] = torch.frombuffer(buffer, dtype=dtype, count=count, offset=data_start + begin).view(shape)
    if covered != data_len:
        raise ValueError(f"its tensors cover {covered} of {data_len} data bytes")
    return tensors, {str(k): str(v) for k, v in metadata.items()}


def map_verified(source: str | os.PathLike[str] | BinaryIO) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Like map_safetensors, and the tensors must match the SHA-256 stored in the file (when it has one)."""
    tensors, meta = map_safetensors(source)
    expected = meta.get(DIGEST_KEY)
    if expected is not None and tensor_digest(tensors) != expected:  # reads through the map: no heap copy
        raise ValueError(f"its tensors do not match the SHA-256 recorded in it ({expected[:16]}...)")
    return tensors, meta


def scratch_file(folder: str | os.PathLike[str]) -> BinaryIO:
    """An unnamed file on disk in ``folder`` (its name is removed at once), freed when closed or the process dies."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    with signals_deferred():  # created and unlinked together: Ctrl-C in between would leave it on disk
        fd, name = tempfile.mkstemp(prefix=".scratch.", suffix=".tmp", dir=folder)
        os.unlink(name)
    return os.fdopen(fd, "w+b")


class RowWriter:
    """Writes tensors of known shapes [rows, ...] into a safetensors file (opened "w+b"), any rows in any order.

    The header goes first (with a digest placeholder); ``write`` puts rows at their offsets with
    ``os.pwrite``; ``finish`` computes the SHA-256 through a map of the written file and patches it in.
    """

    def __init__(self, file: BinaryIO, specs: Mapping[str, tuple[torch.dtype, tuple[int, ...]]],
                 metadata: Mapping[str, str] | None = None) -> None:
        self.file, self.fd = file, file.fileno()
        self.specs = {name: (dtype, tuple(int(n) for n in shape)) for name, (dtype, shape) in specs.items()}
        header: dict[str, object] = {"__metadata__": {**(metadata or {}), DIGEST_KEY: _PLACEHOLDER}}
        self.offsets: dict[str, int] = {}
        position = 0
        for name in sorted(self.specs, key=lambda n: (-self.specs[n][0].itemsize, n)):  # widest first: aligned
            dtype, shape = self.specs[name]
            nbytes = dtype.itemsize
            for n in shape:
                nbytes *= n
            header[name] = {"dtype": NAMES[dtype], "shape": list(shape), "data_offsets": [position, position + nbytes]}
            self.offsets[name] = position
            position += nbytes
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-(8 + len(text)) % 8)  # safetensors allows space padding; keeps the data 8-byte aligned
        self.header = struct.pack("<Q", len(text)) + text
        self.data_start, self.size = len(self.header), len(self.header) + position
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, self.header, 0)
        os.ftruncate(self.fd, self.size)

    def row_bytes(self, name: str) -> int:
        dtype, shape = self.specs[name]
        nbytes = dtype.itemsize
        for n in shape[1:]:
            nbytes *= n
        return nbytes

    def write(self, name: str, start: int, rows: torch.Tensor) -> None:
        """Rows ``start .. start + len(rows)`` of tensor ``name``."""
        dtype, shape = self.specs[name]
        if rows.dtype != dtype or tuple(rows.shape[1:]) != shape[1:] or not 0 <= start <= start + rows.shape[0] <= shape[0]:
            raise ValueError(f"{name}: rows {tuple(rows.shape)} {rows.dtype} at {start} do not fit {shape} {dtype}")
        data = rows.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        offset = self.data_start + self.offsets[name] + start * self.row_bytes(name)
        view = memoryview(data)
        while len(view):
            written = os.pwrite(self.fd, view, offset)
            view, offset = view[written:], offset + written

    def finish(self, digest: bool = True) -> None:
        """Patch the SHA-256 of the written tensors into the header (skipped for scratch files: ``digest=False``)."""
        if digest:
            tensors, _ = map_safetensors(self.file)
            value = tensor_digest(tensors)
            del tensors
            os.pwrite(self.fd, value.encode(), self.header.index(_PLACEHOLDER.encode()))
        self.file.flush()
