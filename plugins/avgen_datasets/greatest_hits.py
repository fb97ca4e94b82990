"""The Greatest Hits dataset (Owens et al. 2016) in its public flat-folder layout.

Per video ``{id}_denoised.mp4``, ``{id}_denoised.wav`` and ``{id}_times.txt`` (rows
``time material action reaction``; material ``None`` has no class), plus ``train.txt`` and
``test.txt`` listing video ids. One clip per annotated hit with a material; with ``quiet_per_video``
also clips away from every annotated hit, labelled ``silence`` (for an event-driven model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from avgen import AvgenError, BuildContext, Clip, probe

from avgen_datasets.base import MediaClips, check_root, fingerprint
from avgen_datasets.materials import MATERIALS, normalize_material
from avgen_datasets.quiet import GUARD_SECONDS, SILENCE, quiet_centres
from avgen_datasets.splits import carve

SYNTHETIC_MANIFEST = "synthetic_hits.json"  # what the synthetic generator writes beside the videos (synthetic_hits.py)



class GreatestHitsParams(BaseModel):
    """Where the dataset lives and how hits become clips."""

    model_config = ConfigDict(extra="forbid")

    root: Path = Field(Path("data/greatest_hits"), description="folder holding {id}_denoised.mp4/.wav, {id}_times.txt, train.txt, test.txt")
    clip_seconds: float = Field(0.5, ge=0.01, le=600, description="length of each clip in seconds")
    offset: float = Field(-0.1, ge=-600, le=600, description="clip start relative to the hit time in seconds (negative: starts before the hit)")
    sample_rate: int = Field(22050, ge=1000, le=384_000, description="sample rate of the waveforms load_audio returns (resampled)")
    materials: list[str] = Field(list(MATERIALS), min_length=1, description="class names in index order; hits of other materials are skipped")
    actions: list[str] = Field([], description="keep only these actions (e.g. ['hit']); empty keeps all")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="fraction of training videos held out for validation (by video)")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of the validation split")
    skip_missing: bool = Field(False, description="skip listed videos whose files are missing instead of failing")
    quiet_per_video: int = Field(0, ge=0, le=1000, description="also this many clips per video whose window holds no "
                                 "annotated hit (any row: centred in the longest stretches between hits), labelled with "
                                 "an extra class 'silence' (0: the paper's clips only)")


@dataclass(frozen=True)
class Hit:
    """One row of a times file."""

    row: int
    time: float
    material: str
    action: str
    reaction: str


def read_times(path: Path) -> list[Hit]:
    """Rows of a ``{id}_times.txt``: ``time material [action [reaction]]``, whitespace separated."""
    hits = []
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise AvgenError(f"cannot read hit annotations '{path}': {exc.strerror or exc}") from exc
    for row, line in enumerate(lines):
        fields = line.split()
        if len(fields) < 2 or fields[0].startswith("#"):
            continue
        try:
            time = float(fields[0])
        except ValueError:
            continue  # a header line
        action = fields[2] if len(fields) > 2 else ""
        reaction = fields[3] if len(fields) > 3 else ""
        hits.append(Hit(row, time, fields[1], action, reaction))
    return hits


def read_ids(path: Path) -> list[str]:
    """Video ids listed one per line (suffixes like ``_denoised.mp4`` are tolerated)."""
    ids = []
    for line in path.read_text(encoding="utf-8").splitlines():
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        name = Path(name).name
        for suffix in (".mp4", ".wav", ".txt"):
            name = name.removesuffix(suffix)
        for suffix in ("_denoised", "_times", "_mic"):
            name = name.removesuffix(suffix)
        ids.append(name)
    return list(dict.fromkeys(ids))


class GreatestHits(MediaClips):
    """Clips of the Greatest Hits layout; validation carved from training videos."""

    def __init__(self, params: GreatestHitsParams) -> None:
        self.params = params
        self.root = check_root(params.root)
        self.class_names = [normalize_material(m) for m in params.materials]
        if params.quiet_per_video > 0:
            if SILENCE in self.class_names:
                raise AvgenError(f"data.materials names '{SILENCE}', the class quiet_per_video adds; drop it or set "
                                 "quiet_per_video = 0")
            self.class_names.append(SILENCE)
        self.sample_rate = params.sample_rate
        self.clip_seconds = params.clip_seconds

    def prepare(self, progress=None) -> None:
        """Check that the folder and split lists exist."""
        if not self.root.is_dir():
            raise AvgenError(
                f"Greatest Hits folder '{self.root}' does not exist; put {{id}}_denoised.mp4, {{id}}_denoised.wav, "
                f"{{id}}_times.txt, train.txt and test.txt there (see docs/datasets.md) or set data.root"
            )
        for name in ("train.txt", "test.txt"):
            if not (self.root / name).is_file():
                raise AvgenError(f"Greatest Hits folder '{self.root}' has no {name}; it lists the video ids of that split, one per line")
        if (self.root / SYNTHETIC_MANIFEST).is_file():  # `avgen data synth` wrote it: not the real recordings
            self.provenance = f"synthetic hits written by avgen data synth ({SYNTHETIC_MANIFEST} in {self.root})"

    def _build_splits(self) -> dict[str, list[Clip]]:
        train_ids = read_ids(self.root / "train.txt")
        test_ids = read_ids(self.root / "test.txt")
        overlap = sorted(set(train_ids) & set(test_ids))
        if overlap:
            raise AvgenError(f"video '{overlap[0]}' is listed in both train.txt and test.txt of '{self.root}'; list each video once")
        val_ids = carve(train_ids, self.params.val_fraction, self.params.seed)
        return {
            "train": self._video_clips([v for v in train_ids if v not in val_ids], "train"),
            "val": self._video_clips([v for v in train_ids if v in val_ids], "val"),
            "test": self._video_clips(test_ids, "test"),
        }

    def _video_clips(self, video_ids: list[str], split: str) -> list[Clip]:
        index = {name: i for i, name in enumerate(self.class_names)}
        actions = {a.lower() for a in self.params.actions}
        clips = []
        for vid in video_ids:
            video = self.root / f"{vid}_denoised.mp4"
            audio = self.root / f"{vid}_denoised.wav"
            times = self.root / f"{vid}_times.txt"
            missing = [p for p in (video, audio, times) if not p.is_file()]
            if missing:
                if self.params.skip_missing:
                    self._skipped_rows[split].append(f"video {vid}: '{missing[0].name}' is missing (data.skip_missing)")
                    continue
                raise AvgenError(f"Greatest Hits video '{vid}' is listed but '{missing[0]}' is missing; add it or set data.skip_missing = true")
            source_id = fingerprint(video, audio, times)
            hits = read_times(times)
            for hit in hits:
                label = index.get(normalize_material(hit.material))
                if label is None:
                    self._skipped_rows[split].append(
                        f"line {hit.row + 1} of {times}: material {hit.material!r} is not one of the dataset's classes")
                    continue
                if actions and hit.action.lower() not in actions:
                    self._skipped_rows[split].append(
                        f"line {hit.row + 1} of {times}: action {hit.action!r} is not in data.actions")
                    continue
                if not math.isfinite(hit.time) or hit.time < 0:  # inf, nan, negative: no place in the video
                    self._skipped_rows[split].append(
                        f"line {hit.row + 1} of {times}: hit time {hit.time!r} is not a finite number of seconds >= 0")
                    continue
                clips.append(Clip(
                    id=f"{vid}_{hit.row:04d}", label=label, video=video, audio=audio,
                    start=max(0.0, hit.time + self.params.offset), duration=self.params.clip_seconds,
                    group=vid, fingerprint=source_id,
                ))
            clips += self._quiet_clips(vid, video, audio, hits, source_id)
        return clips

    def _quiet_clips(self, vid: str, video: Path, audio: Path, hits: list[Hit], source_id: str) -> list[Clip]:
        """Up to ``quiet_per_video`` clips of class ``silence`` whose windows keep ``GUARD_SECONDS`` from every annotated
        time of any row (fewer where the hits leave no such room)."""
        count, length = self.params.quiet_per_video, self.params.clip_seconds
        if count == 0:
            return []
        times = np.array([h.time for h in hits if math.isfinite(h.time)], dtype=np.float64)
        seconds = float(probe(video).duration)
        return [Clip(id=f"{vid}_q{k:03d}", label=len(self.class_names) - 1, video=video, audio=audio,
                     start=round(centre - length / 2, 6), duration=length, group=vid, fingerprint=source_id)
                for k, centre in enumerate(quiet_centres(times, seconds, length + 2 * GUARD_SECONDS, count))]


def make_greatest_hits(params: GreatestHitsParams, context: BuildContext) -> GreatestHits:
    return GreatestHits(params)
