"""The contact footage of benchmarks/bench_longvideo.py --mode events shows its contacts: the ball falls onto the
floor at each contact time and is still there, and never jumps (checked on the motion it is drawn with, and on
the frames of a short video)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from _video import ball_position, contact_times, make_contact_footage  # noqa: E402


def test_the_ball_falls_onto_the_floor_at_each_contact_and_never_jumps():
    fps = 30
    times = contact_times(600.0, 36)
    assert len(times) == 36 and all(b - a >= 4.0 for a, b in zip(times, times[1:]))
    track = np.array([ball_position(i / fps, times) for i in range(600 * fps)])
    height, across = track[:, 0], track[:, 1]
    for t in times:
        at = int(np.ceil(t * fps))  # the first frame at or after the contact: the ball is down
        assert height[at] == 0.0 and height[at - 1] > 0.0 and height[at + fps // 2] == 0.0
        falling = height[at - 5:at]
        assert np.all(np.diff(falling) < 0) and falling[0] - falling[-1] > 0.1  # fast, and speeding up to the floor
    steps = np.abs(np.diff(height))
    assert steps.max() < 0.2  # from frame to frame the ball moves, never jumps
    assert np.abs(np.diff(across)).max() < 0.02
    assert (steps > 0.05).sum() <= 36 * 11  # fast only in the last third of a second of each fall
    assert np.isclose((height == 0.0).mean(), 1 - 36 * 2.85 / 600, atol=0.01)  # at rest between drops


def test_the_contact_video_has_the_ball_on_the_floor_from_the_contact_frame(tmp_path):
    import avgen

    video, times = make_contact_footage(tmp_path / "c.mp4", 320, 180, 12.0, 2)
    frames = avgen.read_frames(video, 30, None).numpy().astype(int)
    yellow = (frames[..., 0] > 200) & (frames[..., 1] > 170) & (frames[..., 2] < 70)  # the ball, not the gradient
    rows = np.array([np.nonzero(m.any(1))[0].max() if m.any() else -1 for m in yellow])  # the ball's lowest row
    floor = 180 - 180 // 8
    for t in times:
        at = int(np.ceil(t * 30))
        assert abs(rows[at] - (floor - 1)) <= 2 and rows[at - 3] < floor - 10
    assert avgen.probe(video).duration >= 11.9
