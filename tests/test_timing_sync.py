"""The av_sync metric: audio shifted by known offsets against a rendered video is recovered within one frame.

The video is drawn here (a block that falls onto a floor, rests, and lifts, filmed by a
shaking camera with sensor noise) and encoded to a real mp4; the sound is a modal "clack" at
each contact, shifted by a known offset. Clips are 0.5 s windows like the datasets' clips.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import avgen
from avgen import Clip, EvalContext
from avgen._core import media

FPS, SIZE, RATE, SECONDS = 30, 128, 22050, 7.0
CONTACTS = [1.0, 2.1, 3.0, 4.2, 5.3, 6.1]  # seconds, on frames
FRAME = 1.0 / FPS

pytestmark = pytest.mark.usefixtures("one_thread", "avgen_home")


def render_video(path: Path) -> Path:
    """A textured floor and a dark block that falls for 6 frames onto it at each contact (an abrupt stop), rests
    5 frames and is lifted for 10 (easing out, as a hand does); filmed by a shaking camera with sensor noise."""
    rng = np.random.default_rng(0)
    grain = torch.nn.functional.avg_pool2d(torch.from_numpy(rng.standard_normal((1, SIZE + 12, SIZE + 12))), 5, 1)[0]
    floor = (128 + 120 * grain.numpy()).clip(0, 255)  # a smooth texture (pixel-sized noise does not survive H.264)
    frames = []
    for k in range(round(SECONDS * FPS)):
        height = 1.0  # 0 = on the floor
        for contact in CONTACTS:
            c = round(contact * FPS)
            if c - 6 <= k <= c:
                height = (c - k) / 6
            elif c < k <= c + 5:
                height = 0.0
            elif c + 5 < k <= c + 15:
                height = math.sin(0.5 * math.pi * (k - c - 5) / 10)
        scene = floor.copy()
        top = 4 + int(round(70 - 55 * height))
        scene[top:top + 24, 54:82] = 30.0
        dy, dx = rng.integers(-3, 4, 2)
        image = scene[4 + dy:4 + dy + SIZE, 4 + dx:4 + dx + SIZE] + rng.normal(0, 3, (SIZE, SIZE))
        frames.append(np.repeat(image.clip(0, 255).astype(np.uint8)[..., None], 3, axis=2))
    return avgen.write_video(path, np.stack(frames), FPS)


def clack(seconds: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    rng = np.random.default_rng(1)
    return (0.5 * np.sin(2 * np.pi * 900 * t) * np.exp(-t / 0.05) + 0.3 * rng.standard_normal(t.size) * np.exp(-t / 0.005))


def soundtrack(shift: float) -> torch.Tensor:
    """The clacks at each contact + shift, over quiet room noise."""
    wave = np.random.default_rng(2).normal(0, 0.002, int(SECONDS * RATE))
    for contact in CONTACTS:
        start = round((contact + shift) * RATE)
        piece = clack()[: wave.size - start]
        wave[start:start + piece.size] += piece
    return torch.from_numpy(wave).float()


class VideoFile(avgen.Dataset):
    """Frames of one mp4 file for any clip window (what EvalContext.dataset offers a metric)."""

    class_names, sample_rate, clip_seconds = ["block"], RATE, 0.5

    def load_frames(self, clip: Clip, fps: float, size: int) -> torch.Tensor:
        return media.read_frames(clip.video, fps, size, start=clip.start, duration=clip.duration)


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_video(tmp_path_factory.mktemp("sync") / "block.mp4")


def context(video: Path, run_dir: Path, shifts: dict[str, float]) -> EvalContext:
    """Clips of 0.5 s starting 0.25 s before each contact; real sound shifted by shifts['real'], generated kinds by theirs."""
    clips = [Clip(id=f"c{i}", label=0, video=video, audio=None, start=t - 0.25, duration=0.5, group="v")
             for i, t in enumerate(CONTACTS)]

    def cut(shift: float) -> torch.Tensor:
        track = soundtrack(shift)
        return torch.stack([track[round(c.start * RATE):round(c.start * RATE) + round(0.5 * RATE)] for c in clips])

    return EvalContext(run_dir=run_dir, sample_rate=RATE, class_names=["block"], test_ids=[c.id for c in clips],
                       test_labels=torch.zeros(len(clips), dtype=torch.long), real_waves=cut(shifts.pop("real")),
                       generated={kind: cut(s) for kind, s in shifts.items()}, test_clips=clips, dataset=VideoFile())


def per_clip_offsets(metric, ctx: EvalContext, kind: str) -> list[float]:
    from avgen_timing.sync import best_offset, onset_envelope

    waves = ctx.real_waves if kind == "real" else ctx.generated[kind]
    out = []
    for clip, wave, vis in zip(ctx.test_clips, waves, metric.visuals(ctx)):
        env, step = onset_envelope(wave, RATE, metric.p.rate, metric.p.top_db)
        out.append(best_offset(env, step, clip.start, vis.strength, vis.fps, vis.start, metric.p.max_offset))
    return out


@pytest.mark.parametrize("shift", [-0.2, -0.1, -FRAME, 0.0, 0.07, 0.15, 0.2])
def test_known_audio_shifts_are_recovered_within_one_frame(video, tmp_path, shift):
    metric = avgen.create("metric", "av_sync", timeline_clips=0)
    ctx = context(video, tmp_path, {"real": shift})
    offsets = per_clip_offsets(metric, ctx, "real")
    assert all(o is not None and abs(o - shift) <= FRAME for o in offsets), (shift, offsets)
    out = metric.compute(ctx)
    assert out["sync_clips_real"] == len(CONTACTS)
    assert out["sync_offset_ms_real"] == pytest.approx(1000 * np.mean([abs(o) for o in offsets]), abs=1e-3)
    assert out["sync_within_frame_real"] == (1.0 if abs(shift) <= FRAME * 0.999 else 0.0)


def test_the_metric_scores_each_sound_and_draws_the_timeline(video, tmp_path):
    metric = avgen.create("metric", "av_sync", timeline_clips=2)
    out = metric.compute(context(video, tmp_path, {"real": 0.0, "raw": 0.15, "exemplar": -0.1}))
    assert out["sync_within_frame_real"] == 1.0 and out["sync_offset_ms_real"] <= 1000 * FRAME
    assert abs(out["sync_offset_ms_raw"] - 150) <= 1000 * FRAME and out["sync_within_frame_raw"] == 0.0
    assert abs(out["sync_offset_ms_exemplar"] - 100) <= 1000 * FRAME
    png = tmp_path / "figures" / "timeline.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_best_offset_matches_a_brute_force_correlation():
    """best_offset against a direct loop over lags (independent of its vectorised interpolation)."""
    rng = np.random.default_rng(3)
    fps, step = 30.0, 0.001
    visual = rng.random(60)
    envelope = rng.random(400)
    env_start, vis_start, max_offset = 0.7, 0.2, 0.5
    found = best_offset_of(envelope, step, env_start, visual, fps, vis_start, max_offset)
    best, best_lag = -math.inf, None
    for i in range(-500, 501):
        lag = i * step
        times = env_start + (np.arange(envelope.size) + 0.5) * step - lag
        v = np.array([linear(visual, (t - vis_start) * fps) for t in times])
        c = float(np.sum((envelope - envelope.mean()) * v))
        if c > best + 1e-12:
            best, best_lag = c, lag
    assert found == pytest.approx(best_lag, abs=1e-9)


def best_offset_of(*args):
    from avgen_timing.sync import best_offset

    return best_offset(*args)


def linear(values: np.ndarray, position: float) -> float:
    """values at a fractional index, linearly interpolated; 0 outside."""
    if position < 0 or position > values.size - 1:
        return 0.0
    lo = int(math.floor(position))
    hi = min(lo + 1, values.size - 1)
    return float(values[lo] + (values[hi] - values[lo]) * (position - lo))


def test_without_clips_or_dataset_the_metric_measures_nothing(tmp_path):
    metric = avgen.create("metric", "av_sync")
    ctx = EvalContext(run_dir=tmp_path, sample_rate=RATE, class_names=["a"], test_ids=["x"],
                      test_labels=torch.zeros(1, dtype=torch.long), real_waves=torch.zeros(1, RATE // 2))
    assert metric.compute(ctx) == {}
    assert dataclasses.fields(EvalContext)  # the generic fields the metric reads exist on the public context


def test_the_offset_of_a_video_comes_from_all_of_its_clips():
    """Each clip alone may peak at a neighbouring contact; the clips of one video share one offset (the peak of
    their summed curves), and another video keeps its own."""
    from avgen_timing.sync import pooled_offsets

    lags = np.array([-0.1, 0.0, 0.1])
    curves = [(lags, np.array([0.0, 0.9, 1.0])),   # video a, clip 1: alone it would say +0.1
              (lags, np.array([1.0, 0.8, 0.0])),   # video a, clip 2: alone -0.1
              (lags, np.array([0.0, 0.9, 0.1])),   # video a, clip 3: alone 0.0
              None,                                # video a, a clip without an onset
              (lags, np.array([0.0, 0.1, 0.2]))]   # video b
    assert pooled_offsets(curves, ["a", "a", "a", "a", "b"]) == [0.0, 0.0, 0.0, None, 0.1]
