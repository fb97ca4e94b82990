"""folder: your own videos sorted into ``root/class_name/*.mp4``; one clip per file, or one per sound onset.

The sound comes from the video itself, or from a ``.wav`` with the same name beside it.
Files of each class are split into train/val/test by seeded fractions; every clip of a file
stays in that file's split.

With ``cut = "onsets"`` each file yields one clip of ``clip_seconds`` centred on each onset of
its own sound (found by the eval plugin's onset detector with short frames, as the timing plugin finds them),
and with ``quiet_per_file`` also clips where nothing sounds, labelled with an extra class
``silence``: footage without annotations trains the event-driven model.
"""

from __future__ import annotations

import functools
import logging
import random
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from avgen import AvgenError, BuildContext, Clip, create

from avgen_datasets.base import SPLITS, MediaClips, check_root, fingerprint
from avgen_datasets.quiet import SILENCE, quiet_centres

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".avi")
ONSET_RATE = 22050  # a file's sound is read at this rate for its onsets (the timing plugin's detector's rate)

log = logging.getLogger("avgen.datasets.folder")


class FolderParams(BaseModel):
    """Where the class folders are and how each file becomes clips."""

    model_config = ConfigDict(extra="forbid")

    root: Path = Field(Path("data/videos"), description="folder with one sub-folder of videos per class")
    start: float = Field(0.0, ge=0, le=86_400, description="with cut = 'file': seconds into each file where its clip starts")
    clip_seconds: float = Field(2.0, ge=0.01, le=600, description="length of each clip in seconds (shorter files are padded)")
    sample_rate: int = Field(22050, ge=1000, le=384_000, description="sample rate of the waveforms load_audio returns (resampled)")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="fraction of each class's files used for validation")
    test_fraction: float = Field(0.2, ge=0, lt=1, description="fraction of each class's files used for testing")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of the split")
    cut: Literal["file", "onsets"] = Field(
        "file", description="'file': one clip per file, from start; 'onsets': one clip of clip_seconds centred on each "
        "onset of the file's own sound (clamped inside the file), labelled by its class folder")
    min_gap: float = Field(0.25, ge=0, le=600, description="with cut = 'onsets': an onset closer than this many seconds "
                           "to the previous kept one gives no clip")
    quiet_per_file: int = Field(0, ge=0, le=1000, description="with cut = 'onsets': also this many clips per file whose "
                                "window holds no onset (centred in the longest quiet stretches), labelled with an extra "
                                "class 'silence'")


class Folder(MediaClips):
    """Class-per-folder videos."""

    def __init__(self, params: FolderParams) -> None:
        if params.val_fraction + params.test_fraction >= 1:
            raise AvgenError(f"folder dataset: val_fraction + test_fraction must be < 1, got {params.val_fraction + params.test_fraction}")
        if params.quiet_per_file > 0 and params.cut != "onsets":
            raise AvgenError(f"folder dataset: quiet_per_file = {params.quiet_per_file} needs cut = \"onsets\" "
                             "(quiet clips are placed away from the onsets); set data.cut = \"onsets\" or quiet_per_file = 0")
        self.params = params
        self.root = check_root(params.root)
        self.sample_rate = params.sample_rate
        self.clip_seconds = params.clip_seconds
        self._sounds: dict[tuple[str, str, str], tuple[np.ndarray, float]] = {}  # per file: (onsets s, usable seconds)
        self.class_names = self._class_names() if self.root.is_dir() else []

    def _class_dirs(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def _class_names(self) -> list[str]:
        names = self._class_dirs()
        if self.params.quiet_per_file > 0 and names:
            if SILENCE in names:
                raise AvgenError(f"video folder '{self.root}' has a class folder '{SILENCE}', the class that "
                                 "quiet_per_file adds; rename the folder or set quiet_per_file = 0")
            names.append(SILENCE)
        return names

    def prepare(self, progress: Any = None) -> None:
        """Check that root holds class folders with videos."""
        if not self.root.is_dir():
            raise AvgenError(f"video folder '{self.root}' does not exist; make one sub-folder per class holding its .mp4 files, or set data.root")
        self.class_names = self._class_names()
        if not self.class_names:
            raise AvgenError(f"video folder '{self.root}' has no class sub-folders; put videos in '{self.root}/<class_name>/'")

    def _build_splits(self) -> dict[str, list[Clip]]:
        splits: dict[str, list[Clip]] = {s: [] for s in SPLITS}
        classes = [name for name in self.class_names if not (name == SILENCE and self.params.quiet_per_file > 0)]
        without_onsets: list[str] = []
        files = 0
        for label, name in enumerate(classes):
            videos = sorted(p for p in (self.root / name).iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
            random.Random(f"{self.params.seed}:{name}").shuffle(videos)
            num_test = round(self.params.test_fraction * len(videos))
            num_val = round(self.params.val_fraction * len(videos))
            for i, video in enumerate(videos):
                split = "test" if i < num_test else "val" if i < num_test + num_val else "train"
                wav = video.with_suffix(".wav")
                audio = wav if wav.is_file() else video
                group = f"{name}/{video.stem}"
                stamp = fingerprint(video, audio if audio != video else None)
                if self.params.cut == "file":
                    splits[split].append(Clip(
                        id=group, label=label, video=video, audio=audio, start=self.params.start,
                        duration=self.params.clip_seconds, group=group, fingerprint=stamp,
                    ))
                    continue
                files += 1
                events, quiet = self._windows(video, audio, stamp)
                if not events:
                    without_onsets.append(group)
                silence = len(self.class_names) - 1
                for starts, clip_label, prefix in ((events, label, ""), (quiet, silence, f"{SILENCE}/")):
                    for start in starts:
                        splits[split].append(Clip(
                            id=f"{prefix}{group}@{start:.3f}", label=clip_label, video=video, audio=audio, start=start,
                            duration=self.params.clip_seconds, group=group, fingerprint=stamp,
                        ))
        if without_onsets:
            log.warning("folder dataset: %d of %d files had no onset in their sound, so no event clip (the first: %s)",
                        len(without_onsets), files, without_onsets[0])
        return splits

    # ---------------------------------------------------------------- cut = "onsets"

    def _windows(self, video: Path, audio: Path, stamp: str) -> tuple[list[float], list[float]]:
        """Start times (s) of a file's event clips (one per kept onset) and of its quiet clips, each unique to the ms."""
        onsets, seconds = self._sound(video, audio, stamp)
        length = self.params.clip_seconds
        latest = max(0.0, seconds - length)
        events: dict[str, float] = {}
        kept = None
        for t in onsets:
            if kept is not None and t - kept < self.params.min_gap:
                continue
            kept = float(t)
            start = min(max(kept - length / 2, 0.0), latest)
            events.setdefault(f"{start:.3f}", start)
        quiet: dict[str, float] = {}
        for centre in quiet_centres(onsets, seconds, length, self.params.quiet_per_file):
            start = min(max(centre - length / 2, 0.0), latest)
            quiet.setdefault(f"{start:.3f}", start)
        return list(events.values()), sorted(quiet.values())

    def _sound(self, video: Path, audio: Path, stamp: str) -> tuple[np.ndarray, float]:
        """(onset times in s, seconds that both the picture and the sound cover) of a file, computed once per instance
        (the sound is read once, at the detector's rate; the picture is only probed for its length)."""
        key = (str(video), str(audio), stamp)
        if key not in self._sounds:
            from avgen import probe, read_audio

            info = probe(video)
            if audio == video and not info.has_audio:
                raise AvgenError(f"{video}: has no sound track (and no {video.with_suffix('.wav').name} beside it); "
                                 "cut = \"onsets\" places clips at the onsets of each file's own sound")
            wave, _ = read_audio(audio, ONSET_RATE, allow_silent=True)
            wave = wave.numpy()
            seconds = wave.size / ONSET_RATE
            if info.has_video and info.duration > 0:
                seconds = min(seconds, info.duration)
            onsets = np.sort(_onset_metric().onset_times(wave, ONSET_RATE))
            self._sounds[key] = (onsets[onsets < seconds], seconds)  # none past the picture's end
        return self._sounds[key]


@functools.cache
def _onset_metric():
    """The eval plugin's onset metric with short frames (512/128 at 22 050 Hz, as the timing plugin labels footage),
    found through the registry."""
    return create("metric", "onset", window=512 / ONSET_RATE, hop=128 / ONSET_RATE, n_mels=64)


def make_folder(params: FolderParams, context: BuildContext) -> Folder:
    return Folder(params)
