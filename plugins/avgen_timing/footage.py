"""Footage with its own sound: the videos of a folder, the onsets of their soundtracks, and contact times.

A contact is where a sound starts. Where a video comes with annotated times (the Greatest Hits
layout: ``{id}_denoised.mp4`` beside ``{id}_times.txt``) those are the contacts; any other video's
contacts are the onsets of its own soundtrack, found as the ``onset`` metric finds them
(spectral flux of a log-mel spectrogram, peak picking; the eval plugin's detector) but with a
window of 512 samples and a hop of 128 at 22 050 Hz (23 ms, 5.8 ms) instead of the metric's
2048 and 512: those find a clack 13-30 ms after it starts, these within 1-7 ms (measured on
the rendered clacks of tests/test_timing_footage.py), and a contact label must be within a
frame. So no annotation is needed.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Iterable

import numpy as np

from avgen import AvgenError, create, probe, read_audio

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg")
RATE = 22050  # the soundtrack is read at this rate for its onsets


def find_videos(paths: Iterable[Path], outputs: bool = False) -> list[Path]:
    """The video files named and those under the folders named (recursively, sorted); avgen's own outputs
    (``*.avgen.mp4``) only when ``outputs``. A missing path or a folder without videos is one line."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES
                            and not any(part.startswith(".") for part in p.relative_to(path).parts)
                            and (outputs or ".avgen." not in p.name))
            if not inside:
                raise AvgenError(f"{path}: folder holds no videos ({', '.join(VIDEO_SUFFIXES)})")
            found += inside
        elif path.is_file():
            found.append(path)
        else:
            raise AvgenError(f"{path}: no such file or folder")
    return list(dict.fromkeys(found))


def annotated_times(path: Path) -> list[float]:
    """Contact times of a ``{id}_times.txt`` (first column; every row is a contact, whatever its material)."""
    times = []
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if parts:
            try:
                value = float(parts[0])
            except ValueError:
                continue
            if np.isfinite(value) and value >= 0:
                times.append(value)
    return sorted(times)


def times_file(video: Path) -> Path | None:
    """The annotated times beside a Greatest-Hits-layout video, if any."""
    if video.name.endswith("_denoised.mp4"):
        path = video.with_name(video.name[: -len("_denoised.mp4")] + "_times.txt")
        return path if path.is_file() else None
    return None


def sound_file(video: Path) -> Path:
    """Where a video's own sound is: its audio track, else a .wav of the same name beside it (as the datasets
    read it); one line when it has neither."""
    if probe(video).has_audio:
        return video
    wav = video.with_suffix(".wav")
    if wav.is_file():
        return wav
    raise AvgenError(f"{video}: has no sound track (and no {wav.name} beside it); timing needs videos that carry "
                     "their own recorded sound")


def soundtrack(video: Path) -> np.ndarray:
    """The video's own sound (see sound_file), mono at RATE."""
    wave, _ = read_audio(sound_file(video), RATE, allow_silent=True)
    return wave.numpy()


def soundtrack_onsets(video: Path) -> np.ndarray:
    """Seconds of the onsets of the video's own sound (empty for silence)."""
    return sound_onsets(soundtrack(video))


def sound_onsets(wave: np.ndarray) -> np.ndarray:
    """Seconds of the onsets of a mono wave at RATE (the onset metric's detector, short frames: see above)."""
    return _onset_metric().onset_times(wave, RATE)


@functools.cache
def _onset_metric():
    """The eval plugin's onset metric with the short frames, found through the registry."""
    return create("metric", "onset", window=512 / RATE, hop=128 / RATE, n_mels=64)


def contact_times(video: Path, labels: str = "auto", given: dict[Path, list[float]] | None = None,
                  ) -> tuple[np.ndarray, str]:
    """(seconds, where they come from: 'annotated' or 'audio') of a video's contacts. ``labels``: 'auto'
    (annotated where the run's dataset gives times for the video (``given``, a detector's ``annotated``) or a times
    file is beside it, else the soundtrack's onsets), 'audio' or 'annotated'."""
    if given and video in given and labels != "audio":
        return np.asarray(given[video], dtype=np.float64), "annotated"
    annotated = times_file(video)
    if labels == "annotated" and annotated is None:
        raise AvgenError(f"{video}: no annotated times beside it (a Greatest-Hits-layout {{id}}_times.txt); "
                         "use --labels audio to take the soundtrack's onsets")
    if annotated is not None and labels != "audio":
        return np.asarray(annotated_times(annotated)), "annotated"
    return soundtrack_onsets(video), "audio"


def check_has_sound(videos: list[Path]) -> None:
    """One line naming the first video that has no sound track (before any work)."""
    for video in videos:
        if times_file(video) is None:
            sound_file(video)


def match_pairs(found: np.ndarray, truth: np.ndarray, tolerance: float) -> list[tuple[int, int]]:
    """One-to-one matches within +-tolerance (seconds), each true time taking the nearest free detection
    (ties: the earlier): (index in ``found``, index in ``truth``) per match, by true time."""
    free = list(range(len(found)))
    pairs = []
    for i, t in enumerate(truth):
        near = [j for j in free if abs(found[j] - t) <= tolerance + 1e-9]
        if near:
            j = min(near, key=lambda j: (abs(found[j] - t), j))
            free.remove(j)
            pairs.append((j, i))
    return pairs


def match_times(found: np.ndarray, truth: np.ndarray, tolerance: float) -> list[float]:
    """The signed errors found - truth of ``match_pairs``' matches."""
    return [float(found[j] - truth[i]) for j, i in match_pairs(found, truth, tolerance)]


def scores(matched: int, found: int, truth: int) -> dict[str, float]:
    """Precision, recall and F1 of ``matched`` one-to-one matches."""
    precision = matched / found if found else 0.0
    recall = matched / truth if truth else 0.0
    f1 = 2 * precision * recall / (precision + recall) if matched else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4)}
