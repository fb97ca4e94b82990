"""The blind listening test: MUSHRA-style trials over test clips, ratings saved to each run's listening/ratings.json.

A trial is one test clip: its silent video, the real sound labelled as the reference, and in shuffled
blind order the hidden reference and each chosen run's raw and exemplar sound, each rated 0-100. The
page sees only labels (A, B, ...) and opaque URLs; which system a label is stays on the server.
"""

from __future__ import annotations

import random
import shutil
import string
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from avgen import AvgenError

from avgen_serve.listening import append_ratings, mos
from avgen_serve.runs import METHODS, ServedRun


@dataclass
class Stimulus:
    label: str
    system: str  # reference, raw or exemplar
    run: ServedRun | None  # None for the hidden reference
    path: Path


@dataclass
class Trial:
    id: str
    clip: str
    runs: list[ServedRun]
    folder: Path
    reference: Path
    video: Path | None
    stimuli: list[Stimulus]

    def public(self) -> dict[str, Any]:
        return {"trial": self.id, "clip": self.clip, "runs": [r.name for r in self.runs],
                "video": f"/trial/{self.id}/video.mp4" if self.video else None,
                "reference": f"/trial/{self.id}/reference.wav",
                "stimuli": [{"label": s.label, "url": f"/trial/{self.id}/{s.label}.wav"} for s in self.stimuli]}


class Trials:
    """Open trials of this server (in memory); each is rated once, then its files are deleted."""

    def __init__(self, root: Path, seed: int | None = None) -> None:
        self.root = Path(root)
        self._open: dict[str, Trial] = {}
        self._lock = threading.Lock()
        self._random = random.Random(seed)

    def clips(self, runs: list[ServedRun]) -> list[str]:
        """Test clips every chosen run generated (raw and exemplar), in a stable order."""
        common = set(runs[0].test_clips())
        for run in runs[1:]:
            common &= set(run.test_clips())
        return sorted(common)

    def new(self, runs: list[ServedRun]) -> Trial:
        """A trial over a test clip of ``runs`` (those with a known real sound first)."""
        if not runs:
            raise AvgenError("choose at least one run for the listening test")
        clips = self.clips(runs)
        if not clips:
            raise AvgenError("the chosen runs share no generated test clip; run their generate stage "
                             "(avgen run RECIPE --only generate), or choose runs of the same dataset")
        kept = [c for c in clips if any(r.sound(c, "reference") is not None for r in runs)]
        clip = self._random.choice(kept or clips)
        trial_id = uuid.uuid4().hex[:16]
        folder = self.root / "trials" / trial_id
        folder.mkdir(parents=True)
        try:
            reference = self._reference(runs, clip, folder)
            video = self._video(runs[0], clip, folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        systems: list[tuple[str, ServedRun | None, Path]] = [("reference", None, reference)]
        systems += [(method, run, run.sound(clip, method)) for run in runs for method in METHODS]
        self._random.shuffle(systems)
        stimuli = [Stimulus(string.ascii_uppercase[i], system, run, path) for i, (system, run, path) in enumerate(systems)]
        trial = Trial(trial_id, clip, runs, folder, reference, video, stimuli)
        with self._lock:
            self._open[trial_id] = trial
        return trial

    def _reference(self, runs: list[ServedRun], clip: str, folder: Path) -> Path:
        from avgen import write_wav

        for run in runs:
            if (path := run.sound(clip, "reference")) is not None:
                return path
        for run in runs:  # the run kept no wav of this clip: read it from the dataset
            wave = run.real_sound(clip)
            if wave is not None:
                return write_wav(folder / "reference.wav", wave, run._dataset.sample_rate)
        raise AvgenError(f"test clip {clip}: its real sound is neither in the run (generated/real) nor in a dataset on "
                         "disk; put the dataset back where the run found it")

    def _video(self, run: ServedRun, clip_id: str, folder: Path) -> Path | None:
        """The clip's picture as a silent mp4 cut from the dataset's video; None when the dataset is not on disk."""
        from avgen import probe, read_frames, write_video

        clip = run.dataset_clip(clip_id)
        if clip is None or clip.video is None:
            return None
        fps = probe(clip.video).fps or 30.0
        frames = read_frames(clip.video, fps, None, start=max(clip.start, 0.0), duration=clip.duration)
        height, width = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2  # H.264 wants even sizes
        return write_video(folder / "video.mp4", frames[:, :height, :width], fps=round(fps))

    def get(self, trial_id: str) -> Trial:
        with self._lock:
            trial = self._open.get(trial_id)
        if trial is None:
            raise AvgenError(f"no open trial {trial_id!r}; it was rated already or the server restarted: start a new one")
        return trial

    def file(self, trial_id: str, name: str) -> Path:
        """A file of an open trial by its public name (video.mp4, reference.wav, A.wav, ...)."""
        trial = self.get(trial_id)
        if name == "video.mp4" and trial.video is not None:
            return trial.video
        if name == "reference.wav":
            return trial.reference
        for stimulus in trial.stimuli:
            if name == f"{stimulus.label}.wav":
                return stimulus.path
        raise AvgenError(f"trial {trial_id} has no file {name!r}")

    def rate(self, trial_id: str, rater: str, scores: dict[str, Any]) -> dict[str, Any]:
        """Save one rating per stimulus into the ratings.json of the run it came from (the hidden reference's
        into every run of the trial); returns each run's mean opinion scores."""
        trial = self.get(trial_id)
        labels = [s.label for s in trial.stimuli]
        missing = [label for label in labels if label not in scores]
        if missing:
            raise AvgenError(f"rate every sound of the trial; missing: {', '.join(missing)}")
        rater = (rater or "").strip()[:80] or "anonymous"
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        by_run: dict[str, list[dict[str, Any]]] = {r.key: [] for r in trial.runs}
        for stimulus in trial.stimuli:
            score = scores[stimulus.label]
            if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 100:
                raise AvgenError(f"sound {stimulus.label}: score {score!r} is not a number from 0 to 100")
            entry = {"trial": trial.id, "clip": trial.clip, "system": stimulus.system, "score": float(score),
                     "rater": rater, "time": now}
            for run in trial.runs if stimulus.run is None else [stimulus.run]:
                by_run[run.key].append(entry)
        with self._lock:
            if self._open.pop(trial_id, None) is None:
                raise AvgenError(f"trial {trial_id} was rated already; start a new one")
        for run in trial.runs:
            append_ratings(run.path, by_run[run.key])
        shutil.rmtree(trial.folder, ignore_errors=True)
        return {"saved": sum(len(v) for v in by_run.values()), "mos": scores_of(trial.runs)}


def scores_of(runs: list[ServedRun]) -> list[dict[str, Any]]:
    """Each run's mean opinion scores, for the page's table."""
    out = []
    for run in runs:
        try:
            out.append({"run": run.key, "name": run.name, "mos": mos(run.path)})
        except AvgenError as exc:
            out.append({"run": run.key, "name": run.name, "error": str(exc)})
    return out
