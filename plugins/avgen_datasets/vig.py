"""vig: an AudioSet-style folder of cut clips (the paper's VIG subset) with a label CSV and split lists.

``root/labels.csv`` rows ``YTID,start_seconds,end_seconds,label`` (AudioSet's ``#`` comment lines
and a header are skipped), clips ``root/{YTID}_{start}.mp4`` (with an optional
``{YTID}_{start}.wav`` beside it for the sound), and ``train.txt``/``test.txt`` listing clip
names ``{YTID}_{start}`` or bare YTIDs.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from avgen import AvgenError, BuildContext, Clip

from avgen_datasets.base import MediaClips, check_root, fingerprint
from avgen_datasets.splits import carve

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".avi")


class VigParams(BaseModel):
    """Where the clips are and how they are read."""

    model_config = ConfigDict(extra="forbid")

    root: Path = Field(Path("data/vig"), description="folder with labels.csv, train.txt, test.txt and the {YTID}_{start} clips")
    labels_file: str = Field("labels.csv", description="CSV of YTID,start_seconds,end_seconds,label inside root")
    clip_seconds: float = Field(10.0, ge=0.01, le=600, description="seconds read from the start of each clip file")
    sample_rate: int = Field(8000, ge=1000, le=384_000, description="sample rate of the waveforms load_audio returns (resampled)")
    classes: list[str] = Field([], description="class names in index order; empty: the sorted labels of the CSV")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="fraction of training YouTube videos held out for validation")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of the validation split")
    skip_missing: bool = Field(False, description="skip listed clips whose files are missing instead of failing")


def _start_names(ytid: str, start: str) -> list[str]:
    """Spellings of a clip file stem: as written in the CSV, as an int, and with 3 decimals."""
    names = [f"{ytid}_{start}"]
    try:
        value = float(start)
        names += [f"{ytid}_{int(value)}", f"{ytid}_{value:.3f}", f"{ytid}_{value:g}"]
    except (ValueError, OverflowError):  # not a number, nan, inf
        pass
    return list(dict.fromkeys(names))


class Vig(MediaClips):
    """AudioSet-style clips; each file is one clip starting at 0."""

    def __init__(self, params: VigParams) -> None:
        self.params = params
        self.root = check_root(params.root)
        self.sample_rate = params.sample_rate
        self.clip_seconds = params.clip_seconds
        self.class_names = list(params.classes)
        self._rows: list[dict[str, Any]] | None = None
        if not self.class_names and (self.root / params.labels_file).is_file():
            self.class_names = sorted({row["label"] for row in self._read_labels() if not row["problem"]})

    def prepare(self, progress: Any = None) -> None:
        """Check that the folder, the CSV and the split lists exist."""
        if not self.root.is_dir():
            raise AvgenError(
                f"VIG folder '{self.root}' does not exist; put {{YTID}}_{{start}}.mp4 clips, {self.params.labels_file} "
                "(YTID,start_seconds,end_seconds,label), train.txt and test.txt there (see docs/datasets.md)"
            )
        for name in (self.params.labels_file, "train.txt", "test.txt"):
            if not (self.root / name).is_file():
                raise AvgenError(f"VIG folder '{self.root}' has no {name}; see docs/datasets.md for the layout")
        if not self.class_names:
            self.class_names = sorted({row["label"] for row in self._read_labels() if not row["problem"]})

    def _read_labels(self) -> list[dict[str, Any]]:
        if self._rows is not None:
            return self._rows
        path = self.root / self.params.labels_file
        rows = []
        with path.open(newline="", encoding="utf-8") as f:
            for line_no, fields in enumerate(csv.reader(f, skipinitialspace=True), start=1):
                fields = [x.strip() for x in fields]
                if not fields or not fields[0] or fields[0].startswith("#") or fields[0].lower() == "ytid":
                    continue
                if len(fields) < 4:
                    raise AvgenError(f"{path}:{line_no}: expected YTID,start_seconds,end_seconds,label, got {','.join(fields)!r}")
                try:
                    start, end = float(fields[1]), float(fields[2])
                except ValueError:
                    raise AvgenError(f"{path}:{line_no}: start/end seconds must be numbers, got {fields[1]!r}, {fields[2]!r}") from None
                label = fields[3].split(",")[0].strip()
                problem = None
                if not all(math.isfinite(x) and x >= 0 for x in (start, end)):  # inf, nan, negative: skipped, not clip 0
                    problem = (f"line {line_no} of {path}: start/end seconds {fields[1]!r}, {fields[2]!r} "
                               "are not finite numbers >= 0")
                rows.append({"ytid": fields[0], "start_text": fields[1], "start": start, "end": end, "label": label,
                             "problem": problem})
        self._rows = rows
        return rows

    def _build_splits(self) -> dict[str, list[Clip]]:
        rows = self._read_labels()
        by_name: dict[str, dict[str, Any]] = {}
        by_ytid: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            row["name"] = self._find_stem(row)
            by_name[row["name"]] = row
            by_ytid.setdefault(row["ytid"], []).append(row)

        def listed(name: str) -> list[dict[str, Any]]:
            entries = [l.strip() for l in (self.root / name).read_text(encoding="utf-8").splitlines()]
            out = []
            for entry in entries:
                if not entry or entry.startswith("#"):
                    continue
                entry = Path(entry).stem if entry.endswith(VIDEO_EXTENSIONS + (".wav",)) else entry
                if entry in by_name:
                    out.append(by_name[entry])
                elif entry in by_ytid:
                    out.extend(by_ytid[entry])
                elif not self.params.skip_missing:
                    raise AvgenError(f"'{entry}' in {self.root / name} has no row in {self.params.labels_file}; add its row or remove it")
            return out

        train, test = listed("train.txt"), listed("test.txt")
        shared = {r["ytid"] for r in train} & {r["ytid"] for r in test}
        if shared:
            raise AvgenError(f"YouTube video '{sorted(shared)[0]}' has clips in both train.txt and test.txt of '{self.root}'; keep each video in one split")
        val_ids = carve([r["ytid"] for r in train], self.params.val_fraction, self.params.seed)
        return {
            "train": self._to_clips([r for r in train if r["ytid"] not in val_ids], "train"),
            "val": self._to_clips([r for r in train if r["ytid"] in val_ids], "val"),
            "test": self._to_clips(test, "test"),
        }

    def _find_stem(self, row: dict[str, Any]) -> str:
        for stem in _start_names(row["ytid"], row["start_text"]):
            if any((self.root / f"{stem}{ext}").is_file() for ext in VIDEO_EXTENSIONS):
                return stem
        return _start_names(row["ytid"], row["start_text"])[0]

    def _to_clips(self, rows: list[dict[str, Any]], split: str) -> list[Clip]:
        index = {name: i for i, name in enumerate(self.class_names)}
        clips = []
        for row in rows:
            if row["problem"]:
                self._skipped_rows[split].append(row["problem"])
                continue
            stem = row["name"]
            video = next((self.root / f"{stem}{ext}" for ext in VIDEO_EXTENSIONS if (self.root / f"{stem}{ext}").is_file()), None)
            wav = self.root / f"{stem}.wav"
            audio = wav if wav.is_file() else video
            if video is None:
                if self.params.skip_missing:
                    continue
                raise AvgenError(f"VIG clip '{stem}' has no video file in '{self.root}' (looked for {stem}.mp4); add it or set data.skip_missing = true")
            if row["label"] not in index:
                continue
            clips.append(Clip(
                id=stem, label=index[row["label"]], video=video, audio=audio, start=0.0,
                duration=self.params.clip_seconds, group=row["ytid"], fingerprint=fingerprint(video, audio if audio != video else None),
            ))
        return clips


def make_vig(params: VigParams, context: BuildContext) -> Vig:
    return Vig(params)
