"""Test videos for the real-footage benchmarks, made with PyAV (never committed): H.264 in the shape of camera
footage (yuv420p, 30 fps, x264's default 250-frame keyframe interval, AAC sound), with moving, textured,
noisy picture so the decoder does real work."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


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
    tmp = path.with_name(path.name + ".part.mp4")
    with av.open(str(tmp), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"preset": preset, "crf": "23"}
        audio = out.add_stream("aac", rate=44100)
        audio.layout = "mono"
        box = min(width, height) // 4
        for i in range(int(round(seconds * fps))):
            image = base.copy()
            x = (i * 17) % max(1, width - box)
            y = int(abs(np.sin(i / 10)) * (height - box))
            image[y:y + box, x:x + box] = (230, 200, 40)
            image = image + noise[i % 16].repeat(8, 0).repeat(8, 1)[:height, :width]
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        rate, chunk = 44100, 44100
        for start in range(0, int(seconds * rate), chunk):
            t = (start + np.arange(min(chunk, int(seconds * rate) - start))) / rate
            tone = (0.1 * np.sin(2 * np.pi * 440 * t) * (np.sin(2 * np.pi * 2 * t) > 0)).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(tone[None], format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
            for packet in audio.encode(frame):
                out.mux(packet)
        for packet in audio.encode(None):
            out.mux(packet)
    tmp.replace(path)
    return path
