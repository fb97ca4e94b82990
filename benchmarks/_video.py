"""Test videos for the real-footage benchmarks, made with PyAV (never committed): H.264 in the shape of camera
footage (yuv420p, 30 fps, x264's default 250-frame keyframe interval, AAC sound), with moving, textured,
noisy picture so the decoder does real work."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

import av
import numpy as np


def write_h264(path: Path, width: int, height: int, fps: int, preset: str, images: Iterator[np.ndarray],
               sound: Callable[[int], Iterator[np.ndarray]], rate: int = 44100) -> Path:
    """Encode ``images`` (RGB uint8 frames) as H.264 and the mono blocks of ``sound(rate)`` as AAC into ``path``
    (written beside it, then renamed: an interrupted run leaves no half file)."""
    tmp = path.with_name(path.name + ".part.mp4")
    with av.open(str(tmp), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"preset": preset, "crf": "23"}
        audio = out.add_stream("aac", rate=rate)
        audio.layout = "mono"
        for image in images:
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        start = 0
        for block in sound(rate):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block[None], dtype=np.float32), format="fltp",
                                               layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
            start += block.shape[0]
            for packet in audio.encode(frame):
                out.mux(packet)
        for packet in audio.encode(None):
            out.mux(packet)
    tmp.replace(path)
    return path


def make_footage(path: Path, width: int, height: int, seconds: float, fps: int = 30, preset: str = "veryfast",
                 seed: int = 0) -> Path:
    """Write (once: an existing file is reused) a ``seconds``-long ``width`` x ``height`` H.264 video."""
    path = Path(path)
    if path.is_file() and path.stat().st_size > 0:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) * 127 // (width + height)], -1).astype(np.uint8)
    noise = rng.integers(0, 40, size=(16, height // 8, width // 8, 1), dtype=np.uint8)
    box = min(width, height) // 4

    def images():
        for i in range(int(round(seconds * fps))):
            image = base.copy()
            x = (i * 17) % max(1, width - box)
            y = int(abs(np.sin(i / 10)) * (height - box))
            image[y:y + box, x:x + box] = (230, 200, 40)
            yield image + noise[i % 16].repeat(8, 0).repeat(8, 1)[:height, :width]

    def sound(rate: int):
        for start in range(0, int(seconds * rate), rate):
            t = (start + np.arange(min(rate, int(seconds * rate) - start))) / rate
            yield (0.1 * np.sin(2 * np.pi * 440 * t) * (np.sin(2 * np.pi * 2 * t) > 0)).astype(np.float32)

    return write_h264(path, width, height, fps, preset, images(), sound)


def contact_times(seconds: float, contacts: int, seed: int = 0) -> list[float]:
    """``contacts`` contact times spread over ``seconds`` (one per equal slot, jittered inside it, at least 3.5 s
    from the slot's start so that each drop has time to rise and fall)."""
    rng = np.random.default_rng(seed)
    slot = seconds / contacts
    if slot < 4.0:
        raise ValueError(f"{contacts} contacts in {seconds:g} s: at most one per 4 s")
    return [round(k * slot + 3.5 + rng.uniform(0.0, slot - 4.0), 3) for k in range(contacts)]


def ball_position(t: float, times: list[float], fall: float = 0.55, hold: float = 0.3,
                  rise: float = 2.0) -> tuple[float, float]:
    """(height above the floor, 0 = resting on it and 1 = the top; across the picture, 0-1) of the ball at time ``t``.
    It rests on the floor, is lifted smoothly to the top while it moves across to where it will drop (``rise`` s,
    no abrupt start or stop), is held still (``hold`` s), then falls freely (``fall`` s, height 1 - (s / fall)^2)
    and hits the floor at each contact time, where it stops dead."""
    def spot(k: int) -> float:
        return 0.15 + 0.7 * ((k * 0.618) % 1.0)

    for k, contact in enumerate(times):
        if t >= contact:
            continue
        into = t - (contact - fall - hold - rise)
        if into < 0:
            return 0.0, spot(k - 1)
        if into < rise:
            smooth = 0.5 - 0.5 * np.cos(np.pi * into / rise)
            return smooth, spot(k - 1) + smooth * (spot(k) - spot(k - 1))
        if into < rise + hold:
            return 1.0, spot(k)
        return 1.0 - ((into - rise - hold) / fall) ** 2, spot(k)
    return 0.0, spot(len(times) - 1)


def make_contact_footage(path: Path, width: int, height: int, seconds: float, contacts: int, fps: int = 30,
                         preset: str = "ultrafast", seed: int = 0) -> tuple[Path, list[float]]:
    """Write (once) an H.264 video of a ball dropped onto a floor ``contacts`` times over ``seconds``, on the
    gradient of ``make_footage`` with fresh sensor-like noise in every frame (none of ``make_footage``'s 16-frame
    cycle, which a motion detector sees as motion every 16 frames), with a knock in the sound at each contact;
    (path, contact times in s).

    The contacts are in the picture: the ball is lifted, held, and falls under gravity until it stops on the
    floor at each contact time (``ball_position``); the frame of the contact is the first with the ball on the floor.
    """
    times = contact_times(seconds, contacts, seed)
    path = Path(path)
    if path.is_file() and path.stat().st_size > 0:
        return path, times
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) * 127 // (width + height)], -1).astype(np.uint8)
    floor = height - height // 8
    base[floor:] = (90, 60, 40)  # the floor
    ball = height // 10
    top = height // 8

    def images():
        for i in range(int(round(seconds * fps))):
            lift, across = ball_position(i / fps, times)
            x = int(across * (width - ball))
            y = int(round(floor - ball - lift * (floor - ball - top)))
            image = base.copy()
            image[y:y + ball, x:x + ball] = (230, 200, 40)
            image += rng.integers(0, 16, size=(height, width, 1), dtype=np.uint8)  # sensor noise, new every frame
            yield image

    def sound(rate: int):  # drawn after the pictures, from the same generator
        knock = np.exp(-np.arange(rate // 10) / (rate * 0.012)) * rng.standard_normal(rate // 10) * 0.5
        track = np.zeros(int(seconds * rate), dtype=np.float32)
        for contact in times:
            first = int(round(contact * rate))
            piece = knock[: max(0, len(track) - first)]
            track[first:first + len(piece)] += piece
        for start in range(0, len(track), rate):
            yield track[start:start + rate]

    return write_h264(path, width, height, fps, preset, images(), sound), times
