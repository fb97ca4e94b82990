"""`avgen generate` on camera-shaped H.264 video (1280x720 and 1920x1080, 30 fps): the whole command, start-up
and model load included, against the target below.

    python benchmarks/bench_realvideo.py [--run runs/quickstart/pocan] [--seconds 10] [--repeats 2]

Target: wall time <= F + 0.25 x the video's duration + 0.5 s at 720p, where F is the start-up floor
(`python -c "import torch"`) measured in the same run, and 1080p within 1.5x of that. Without --run
it trains a small quickstart-shaped run (EfficientNet-Lite0 at 8 fps, STFT 2048/512, 32 Griffin-Lim
iterations; see bench_generate.py). The videos are made once with PyAV (benchmarks/_video.py) in --cache.
Measured in the same run, as the floors the command cannot beat: `python -c "import torch"` (start-up of
any torch program) and PyAV decoding every frame of the video with FFmpeg's threads (no conversion).
Prints the best of --repeats runs of each (the least disturbed by other processes).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av

from _timing import record  # benchmarks/_timing.py
from _video import make_footage
from bench_generate import train_small_run

SIZES = {"720p": (1280, 720), "1080p": (1920, 1080)}


def best_wall(command: list[str], repeats: int, env: dict[str, str] | None = None) -> tuple[float, str]:
    """(least wall seconds of ``repeats`` runs, stderr of that run)."""
    best, text = float("inf"), ""
    for _ in range(repeats):
        started = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
        if seconds < best:
            best, text = seconds, proc.stderr
    return best, text


def decode_floor(video: Path, repeats: int) -> float:
    """Least seconds for PyAV to decode every frame with FFmpeg's threads, converting none."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        with av.open(str(video)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for _frame in container.decode(stream):
                pass
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a trained run directory (default: train a small one)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the test videos")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "avgen-bench-videos")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run or train_small_run(Path(tmp))
        env = {**os.environ, "NO_COLOR": "1"}
        torch_seconds, _ = best_wall([sys.executable, "-c", "import torch"], args.repeats)
        print(f"run {run_dir}; {os.cpu_count()} CPUs; `python -c 'import torch'` {torch_seconds:.2f} s (best of "
              f"{args.repeats})")
        target_720 = torch_seconds + 0.25 * args.seconds + 0.5  # F + 0.25 x duration + 0.5 s
        for name in args.sizes:
            width, height = SIZES[name]
            video = make_footage(args.cache / f"footage_{name}_{args.seconds:g}s.mp4", width, height, args.seconds)
            floor = decode_floor(video, args.repeats)
            wall, stderr = best_wall([sys.executable, "-m", "avgen", "generate", str(video), "--run", str(run_dir),
                                      "-o", str(Path(tmp) / "out")], args.repeats, env)
            found = re.search(r"loaded \S+ from .* in ([0-9.]+) s", stderr)
            load = float(found.group(1)) if found else float("nan")
            target = target_720 * (1.5 if name == "1080p" else 1.0)
            record("realvideo", **{f"{name}_wall_seconds": wall, f"{name}_target_ratio": target / wall,
                                   f"{name}_load_seconds": load, f"{name}_decode_floor_seconds": floor,
                                   "torch_import_seconds": torch_seconds})
            print(f"{name}: {args.seconds:g} s video, `avgen generate` {wall:.2f} s wall (model load {load:.2f} s; "
                  f"decoding every frame alone {floor:.2f} s) = {wall / args.seconds:.3f} x duration; target "
                  f"{target:.2f} s (F {torch_seconds:.2f} s + 0.25 x duration + 0.5 s"
                  f"{', x 1.5' if name == '1080p' else ''}) -> {target / wall:.2f}x the target")


if __name__ == "__main__":
    main()
