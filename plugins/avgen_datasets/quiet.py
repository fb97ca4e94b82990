"""Clips where nothing sounds: windows away from every contact, labelled with the extra class ``silence``.

The ``folder`` dataset (``quiet_per_file``, away from each file's audio onsets) and the Greatest Hits layout
(``quiet_per_video``, away from every annotated hit) add them, so an event-driven model also learns what a
window without a contact looks and sounds like.
"""

from __future__ import annotations

import numpy as np

SILENCE = "silence"  # the class of the quiet clips (appended to class_names when a dataset adds them)
GUARD_SECONDS = 0.1  # an annotated hit's sound rings on: quiet windows keep this far from every hit time


def quiet_centres(onsets: np.ndarray, seconds: float, length: float, count: int) -> list[float]:
    """Up to ``count`` centres of clip-length windows inside ``seconds`` that hold no onset (each onset at least
    length / 2 from the centre), deterministic: each goes to the quiet stretch of admissible centres where the
    spacing stays widest (the longest stretch first), evenly inside it; ties go to the earlier stretch."""
    if count <= 0:
        return []
    half = length / 2
    lo, hi = half, max(half, seconds - half)
    stretches: list[tuple[float, float]] = []
    begin = lo
    for t in sorted(float(t) for t in onsets):  # a centre is admissible outside every (t - half, t + half)
        if t - half >= begin and begin <= hi:
            stretches.append((begin, min(t - half, hi)))
        begin = max(begin, t + half)
    if begin <= hi:
        stretches.append((begin, hi))
    if not stretches:
        return []
    placed = [0] * len(stretches)

    def room(i: int) -> tuple[float, float, int]:
        """The spacing one more centre in stretch i would leave (-1: its single point is taken), its width, -i."""
        width = stretches[i][1] - stretches[i][0]
        return (-1.0 if width == 0 and placed[i] else width / (placed[i] + 2), width, -i)

    for _ in range(count):
        best = max(range(len(stretches)), key=room)
        if room(best)[0] < 0:
            break  # every admissible centre is taken
        placed[best] += 1
    centres = []
    for (a, b), n in zip(stretches, placed):
        centres += [a + (b - a) * (k + 1) / (n + 1) for k in range(n)]
    return sorted(centres)
