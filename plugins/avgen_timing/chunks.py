"""A detector over a whole video, read in chunks: memory flat in the video's length.

The video is read CHUNK seconds at a time, each chunk widened by MARGIN seconds each side (so a
detector that looks at neighbouring frames sees them at a chunk's edge too); a chunk owns the
events of its middle, [start, start + CHUNK). ``detect_events`` gives the events alone (sound by
events, ``onsets.py``), ``picture_curves`` the contact strength as well (``avgen timing sync``,
``scoring.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from avgen import FrameReader

CHUNK = 20.0  # seconds of frames read at once (plus MARGIN each side)
MARGIN = 1.0


def chunks(detector: Any, video: Path, duration: float) -> Iterator[tuple[float, float, torch.Tensor]]:
    """(start, lo, frames) per chunk: the chunk owns [start, start + CHUNK); its frames, at the detector's fps
    and input size, begin at lo = start - MARGIN (not before 0; on a frame of the detector's fps) and end
    MARGIN after it (not past the video).

    One reader decodes the video once, in order: a chunk's first frames are the previous chunk's last ones,
    kept, not decoded again (a fresh container per chunk seeked back to the keyframe before each)."""
    fps = float(detector.fps)
    held, held_from = None, 0  # the previous chunk's frames, and the index of its first
    with FrameReader(video, fps, detector.input_size) as reader:
        start = 0.0
        while start < duration:
            lo, hi = max(0.0, start - MARGIN), min(duration, start + CHUNK + MARGIN)
            first, count = round(lo * fps), max(1, int(round(max(hi - lo, 1.0 / fps) * fps)))
            if held is not None and held_from <= first < held_from + len(held):
                keep = held[first - held_from:first - held_from + count]
                more = count - len(keep)
                frames = torch.cat([keep, reader.read(first + len(keep), more)]) if more > 0 else keep
            else:
                frames = reader.read(first, count)
            held, held_from = frames, first
            yield start, first / fps, frames
            start += CHUNK


def owned(times: Any, start: float) -> Any:
    """Which of ``times`` (seconds in the video; a tensor or an array) the chunk from ``start`` owns."""
    return (times >= start) & (times < start + CHUNK)


def detect_events(detector: Any, video: Path, duration: float) -> torch.Tensor:
    """The detector's events float32 [K, 2] (seconds, confidence) over the whole video (``Detector.detect``)."""
    found = []
    for start, lo, frames in chunks(detector, video, duration):
        events = detector.detect(frames).reshape(-1, 2).float()
        events[:, 0] += lo
        found.append(events[owned(events[:, 0], start)])
    return torch.cat(found) if found else torch.zeros(0, 2)


def picture_curves(detector: Any, video: Path, duration: float) -> tuple[np.ndarray, np.ndarray]:
    """(contact strength [N] with frame k at k / fps, events [K, 2] in seconds) over the whole video, float64
    (``Detector.curves``)."""
    fps = detector.fps
    strengths, events = [], []
    for start, lo, frames in chunks(detector, video, duration):
        first, last = round((start - lo) * fps), round((min(start + CHUNK, duration) - lo) * fps)
        strength, found = detector.curves(frames)
        strengths.append(strength.double().numpy()[first:last])
        found = found.double().numpy().reshape(-1, 2)
        found[:, 0] += lo
        events.append(found[owned(found[:, 0], start)])
    return np.concatenate(strengths) if strengths else np.zeros(0), np.concatenate(events) if events else np.zeros((0, 2))
