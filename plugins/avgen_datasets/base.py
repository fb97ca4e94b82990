"""Shared pieces of the file-backed datasets: clip loading through avgen._core.media, fingerprints."""

from __future__ import annotations

from pathlib import Path

import torch

from avgen import AvgenError, Clip, Dataset


def fingerprint(*paths: Path | None) -> str:
    """Cheap identity of source files (size and mtime of each), so caches notice changed files."""
    parts = []
    for path in paths:
        if path is None:
            continue
        try:
            stat = path.stat()
        except OSError:
            parts.append(f"{path.name}:missing")
            continue
        parts.append(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return "|".join(parts)


SPLITS = ("train", "val", "test")


def check_root(root: Path, key: str = "data.root") -> Path:
    """``root``, or an AvgenError when it or a folder on its path is a file: raised as the dataset is built, so
    `avgen run` stops before it makes a run directory (a missing folder is the dataset's own, later error)."""
    root = Path(root)
    for path in (root, *root.parents):
        if path.exists():
            if not path.is_dir():
                where = "it is" if path == root else f"'{path}' on its path is"
                raise AvgenError(f"{key} '{root}': {where} a file, not a folder; set {key} to a folder")
            break
    return root


class MediaClips(Dataset):
    """clips / load_frames / load_audio for clips that point at media files (worker-safe: no open handles)."""

    sample_rate: int
    _splits: dict[str, list[Clip]] | None = None
    _skipped_rows: dict[str, list[str]]  # split -> why each annotation row was left out (filled by _build_splits)

    def prepare(self, progress=None) -> None:  # pragma: no cover - every dataset overrides it
        raise NotImplementedError

    def _build_splits(self) -> dict[str, list[Clip]]:  # pragma: no cover
        raise NotImplementedError

    def clips(self, split: str) -> list[Clip]:
        """Clips of 'train', 'val' or 'test' (the splits are built once, after prepare)."""
        if split not in SPLITS:
            raise AvgenError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")
        if self._splits is None:
            self.prepare()
            self._skipped_rows = {name: [] for name in SPLITS}
            self._splits = self._build_splits()
        return list(self._splits[split])

    def skipped_rows(self, split: str) -> list[str]:
        """Annotation rows left out of ``split`` (a bad time), one line each; the runner warns and lists them in skipped.txt."""
        self.clips(split)
        return list(self._skipped_rows[split])

    def load_frames(self, clip: Clip, fps: float, size: int) -> torch.Tensor:
        """Frames of the clip at fps, size x size: uint8 [N, size, size, 3], N = round(duration * fps)."""
        from avgen import read_frames

        if clip.video is None:
            raise AvgenError(f"clip '{clip.id}' has no video file; this dataset is audio-only")
        return read_frames(clip.video, fps, size, start=clip.start, duration=clip.duration)

    def load_audio(self, clip: Clip) -> torch.Tensor:
        """Mono float32 [round(duration * sample_rate)], zero-padded if the file ends early."""
        from avgen import read_audio

        source = clip.audio if clip.audio is not None else clip.video
        wave, _ = read_audio(source, sample_rate=self.sample_rate, start=clip.start, duration=clip.duration)
        return wave
