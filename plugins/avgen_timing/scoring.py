"""`avgen timing sync`: how well a video's picture and its own soundtrack agree, on CPU, for any video with sound.

Per video: the detector's contacts against the soundtrack's onsets (precision, recall, F1 with
each onset matched to at most one contact within +-tolerance s), and the audio-video offset of
the whole video (the lag within +-max_offset that maximises the covariance of the soundtrack's
onset envelope with the detector's contact strength: one offset per recording, from all of its
contacts). With a reference folder the video's soundtrack onsets are scored against those of
the reference video of the same name instead (avgen's output against the real sound).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from avgen import AvgenError, probe

from avgen_timing.chunks import picture_curves
from avgen_timing.footage import (RATE, VIDEO_SUFFIXES, contact_times, find_videos, match_pairs, scores, sound_file,
                                  sound_onsets, soundtrack)
from avgen_timing.sync import onset_envelope, tested_offset


def reference_for(video: Path, reference: Path) -> Path:
    """The video in ``reference`` whose name is ``video``'s without avgen's ``.avgen`` (any video suffix)."""
    stem = video.name.split(".avgen.")[0] if ".avgen." in video.name else video.stem
    matches = sorted(p for p in reference.glob(f"{stem}.*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES
                     and p.stem == stem)
    if not matches:
        raise AvgenError(f"{video}: no video named {stem}.* in --reference {reference}")
    return matches[0]


def score_video(video: Path, detector: Any, tolerance: float, max_offset: float, reference: Path | None = None,
                truth: np.ndarray | None = None, figure: Path | None = None) -> dict[str, Any]:
    """One video's row: its contacts (or with ``reference``, its soundtrack's onsets) against the true onsets,
    and its audio-video offset; with ``figure``, also that row drawn on one time axis into this PNG."""
    duration = float(probe(video).duration)
    wave = soundtrack(video)
    own = sound_onsets(wave)
    if reference is not None:
        truth, source = sound_onsets(soundtrack(reference)), "reference soundtrack"
    elif truth is not None:
        source = "given"
    else:
        truth, source = contact_times(video)
        source = "annotated" if source == "annotated" else "soundtrack"
    strength, events = picture_curves(detector, video, duration)
    found, truth = np.asarray(own if reference is not None else events[:, 0], dtype=np.float64), np.asarray(truth, dtype=np.float64)
    pairs = match_pairs(found, truth, tolerance)
    errors = [float(found[j] - truth[i]) for j, i in pairs]
    envelope, step = onset_envelope(torch.from_numpy(np.ascontiguousarray(wave)), RATE, 200.0, 30.0)
    offset, stands_out = tested_offset(envelope, step, strength, detector.fps, max_offset) if own.size else (None, None)
    row = {
        "video": str(video), "reference": str(reference) if reference is not None else None, "seconds": round(duration, 3),
        "truth": source, "onsets": int(len(truth)), "found": int(len(found)), "matched": len(errors),
        **scores(len(errors), len(found), len(truth)),
        "mean_abs_error_ms": round(float(np.mean(np.abs(errors)) * 1000), 1) if errors else None,
        "offset_ms": round(offset * 1000, 1) if offset is not None and stands_out is not False else None,
        "offset_best_lag_ms": round(offset * 1000, 1) if offset is not None else None,
        "offset_stands_out": stands_out,
    }
    if figure is not None:
        from avgen_timing.timeline import save_sync_figure

        row["figure"] = str(save_sync_figure(figure, row, strength, detector.fps, envelope, step, found, truth, pairs))
    return row


def figure_names(videos: list[Path]) -> dict[Path, str]:
    """``<video name>.sync.png`` per video (``clip.mp4.sync.png``), numbered where two folders hold the same name."""
    names: dict[Path, str] = {}
    for video in videos:
        name, k = f"{video.name}.sync.png", 1
        while name in names.values():
            k += 1
            name = f"{video.name}.{k}.sync.png"
        names[video] = name
    return names


def summarise(rows: list[dict[str, Any]], frame: float) -> dict[str, Any]:
    """Micro-averaged precision/recall/F1 over the videos, mean |offset| and the share within one frame (of the
    videos whose offset was found: its lag stood out from unrelated sound)."""
    matched, found, truth = (sum(r[k] for r in rows) for k in ("matched", "found", "onsets"))
    offsets = np.array([abs(r["offset_ms"]) for r in rows if r["offset_ms"] is not None]) / 1000
    return {
        "videos": len(rows), "onsets": truth, "found": found, "matched": matched, **scores(matched, found, truth),
        "offset_ms_mean_abs": round(float(offsets.mean() * 1000), 1) if offsets.size else None,
        "within_one_frame": round(float((offsets <= frame + 1e-9).mean()), 4) if offsets.size else None,
        "offsets_found": int(offsets.size),  # the videos whose best lag stood out from unrelated sound
        "offsets_undetermined": sum(r.get("offset_stands_out") is False for r in rows),
        "frame_ms": round(frame * 1000, 2),
    }


def score_folder(paths: list[Path], detector_factory: Callable[[list[Path], Path], Any], tolerance: float,
                 max_offset: float, reference: Path | None = None, progress: Callable[[], None] | None = None,
                 figures: Path | None = None) -> dict[str, Any]:
    """Rows for every video of ``paths`` and their summary. ``detector_factory(videos, video)`` gives the
    detector scoring ``video`` (the same one for all, or one fitted on the others: leave one video out).
    ``figures``: a folder that gets each video's row drawn as ``<name>.sync.png`` (``figure_names``)."""
    videos = find_videos(paths, outputs=True)
    if reference is not None:
        pairs = [(video, reference_for(video, reference)) for video in videos]  # every pair found before any work
    else:
        pairs = [(video, None) for video in videos]
    for video, ref in pairs:
        for path in (video, ref) if ref is not None else (video,):
            sound_file(path)
    rows = []
    detector = None
    names = figure_names(videos) if figures is not None else {}
    for video, ref in pairs:
        detector = detector_factory(videos, video)
        figure = figures / names[video] if figures is not None else None
        rows.append(score_video(video, detector, tolerance, max_offset, ref, figure=figure))
        if progress is not None:
            progress()
    frame = 1.0 / detector.fps if detector is not None else 0.0
    return {"summary": summarise(rows, frame), "videos": rows}
