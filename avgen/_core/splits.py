"""A split's tensors: SplitData (views of memory-mapped files) and the rows writer that fills its file clip by clip."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from avgen._core.atomic import TEMP_SUFFIX, WriteError, file_mode, signals_deferred, write_error
from avgen._core.components import Clip
from avgen._core.tensorfile import RowWriter, map_safetensors, scratch_file


@dataclass
class SplitData:
    """One split's clips and their tensors (features may be None without an encoder).

    After featurize the tensors are views of memory-mapped files (the cached split entry, and a
    scratch file for ``rep``), so a split larger than RAM costs page cache, not heap.
    """

    clips: list[Clip]
    wave: torch.Tensor  # [M, T] at the representation's sample rate
    label: torch.Tensor  # long [M]
    features: torch.Tensor | None = None  # [M, N, feature_dim]
    rep: torch.Tensor | None = None  # [M, D, F]

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"wave": self.wave, "label": self.label}
        if self.features is not None:
            out["features"] = self.features
        if self.rep is not None:
            out["rep"] = self.rep
        return out


class _SplitRows:
    """A split's rows (wave, features) written into a file as they arrive, in clip order.

    The file is a temporary beside the split's cache entry (renamed into place by ``finish`` when
    every clip was readable and ``publish``), or an unnamed scratch file; either way ``finish``
    returns memory-mapped views, so the split is never held in the heap.
    """

    def __init__(self, target: Path | None, scratch_dir: Path, count: int, samples: int, publish: bool) -> None:
        self.target, self.scratch_dir, self.count, self.samples = target, scratch_dir, count, samples
        self.publish = publish and target is not None
        self.file: Any = None
        self.tmp_path: Path | None = None
        self.writer: RowWriter | None = None
        self.published, self.nbytes = False, 0

    def put(self, i: int, wave: torch.Tensor, features: torch.Tensor | None) -> None:
        try:
            if self.writer is None:
                self._open(features)
            self.writer.write("wave", i, wave[None])
            if features is not None:
                self.writer.write("features", i, features[None])
        except OSError as exc:
            raise self._error(exc) from exc

    def _open(self, features: torch.Tensor | None) -> None:
        specs = {"wave": (torch.float32, (self.count, self.samples))}
        if features is not None:
            specs["features"] = (torch.float32, (self.count, *features.shape))
        if self.publish:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            with signals_deferred():  # the file and its name in tmp_path (which close() removes) together
                fd, name = tempfile.mkstemp(prefix=f".{self.target.name}.", suffix=TEMP_SUFFIX, dir=self.target.parent)
                self.file, self.tmp_path = os.fdopen(fd, "w+b"), Path(name)
        else:
            self.file = scratch_file(self.scratch_dir)
        self.writer = RowWriter(self.file, specs)
        self.nbytes = self.writer.size

    def finish(self, problems: dict[int, str]) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(features, wave) of the readable clips, mapped; publishes the split entry when nothing was skipped."""
        if self.writer is None:  # no clip, or none readable
            return None, torch.zeros(0, self.samples)
        try:
            if problems:
                return self._compact([i for i in range(self.count) if i not in problems])
            self.writer.finish(digest=self.publish)
            if self.publish:
                os.fchmod(self.file.fileno(), file_mode())
                os.fsync(self.file.fileno())
                with signals_deferred():
                    os.replace(self.tmp_path, self.target)
                    self.tmp_path, self.published = None, True
        except OSError as exc:
            raise self._error(exc) from exc
        tensors, _ = map_safetensors(self.file)
        return tensors.get("features"), tensors["wave"]

    def _compact(self, kept: list[int], chunk: int = 256) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The rows ``kept`` copied chunk by chunk into a scratch file (a split with skipped clips is not cached)."""
        full, _ = map_safetensors(self.file)
        with scratch_file(self.scratch_dir) as out:
            writer = RowWriter(out, {name: (t.dtype, (len(kept), *t.shape[1:])) for name, t in full.items()})
            for start in range(0, len(kept), chunk):
                index = torch.tensor(kept[start:start + chunk], dtype=torch.long)
                for name, tensor in full.items():
                    writer.write(name, start, tensor[index])
            writer.finish(digest=False)
            tensors, _ = map_safetensors(out)
        return tensors.get("features"), tensors["wave"]

    def _error(self, exc: OSError) -> WriteError:
        return write_error(self.target if self.target is not None else self.scratch_dir, exc)

    def close(self) -> None:
        """Close the file; an unpublished temporary is removed (mapped views stay valid)."""
        if self.file is not None:
            self.file.close()
        if self.tmp_path is not None:
            self.tmp_path.unlink(missing_ok=True)
