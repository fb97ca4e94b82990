"""folder: your own videos sorted into ``root/class_name/*.mp4``; one clip per file.

The sound comes from the video itself, or from a ``.wav`` with the same name beside it.
Files of each class are split into train/val/test by seeded fractions.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from avgen import AvgenError, BuildContext, Clip

from avgen_datasets.base import SPLITS, MediaClips, check_root, fingerprint

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".avi")


class FolderParams(BaseModel):
    """Where the class folders are and how each file becomes a clip."""

    model_config = ConfigDict(extra="forbid")

    root: Path = Field(Path("data/videos"), description="folder with one sub-folder of videos per class")
    start: float = Field(0.0, ge=0, le=86_400, description="seconds into each file where its clip starts")
    clip_seconds: float = Field(2.0, ge=0.01, le=600, description="length of each clip in seconds (shorter files are padded)")
    sample_rate: int = Field(22050, ge=1000, le=384_000, description="sample rate of the waveforms load_audio returns (resampled)")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="fraction of each class's files used for validation")
    test_fraction: float = Field(0.2, ge=0, lt=1, description="fraction of each class's files used for testing")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of the split")


class Folder(MediaClips):
    """Class-per-folder videos."""

    def __init__(self, params: FolderParams) -> None:
        if params.val_fraction + params.test_fraction >= 1:
            raise AvgenError(f"folder dataset: val_fraction + test_fraction must be < 1, got {params.val_fraction + params.test_fraction}")
        self.params = params
        self.root = check_root(params.root)
        self.sample_rate = params.sample_rate
        self.clip_seconds = params.clip_seconds
        self.class_names = self._class_dirs() if self.root.is_dir() else []

    def _class_dirs(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def prepare(self, progress: Any = None) -> None:
        """Check that root holds class folders with videos."""
        if not self.root.is_dir():
            raise AvgenError(f"video folder '{self.root}' does not exist; make one sub-folder per class holding its .mp4 files, or set data.root")
        self.class_names = self._class_dirs()
        if not self.class_names:
            raise AvgenError(f"video folder '{self.root}' has no class sub-folders; put videos in '{self.root}/<class_name>/'")

    def _build_splits(self) -> dict[str, list[Clip]]:
        splits: dict[str, list[Clip]] = {s: [] for s in SPLITS}
        for label, name in enumerate(self.class_names):
            files = sorted(p for p in (self.root / name).iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
            random.Random(f"{self.params.seed}:{name}").shuffle(files)
            num_test = round(self.params.test_fraction * len(files))
            num_val = round(self.params.val_fraction * len(files))
            for i, video in enumerate(files):
                split = "test" if i < num_test else "val" if i < num_test + num_val else "train"
                wav = video.with_suffix(".wav")
                audio = wav if wav.is_file() else video
                splits[split].append(Clip(
                    id=f"{name}/{video.stem}", label=label, video=video, audio=audio, start=self.params.start,
                    duration=self.params.clip_seconds, group=f"{name}/{video.stem}",
                    fingerprint=fingerprint(video, audio if audio != video else None),
                ))
        return splits


def make_folder(params: FolderParams, context: BuildContext) -> Folder:
    return Folder(params)
