"""`avgen generate` on long camera-shaped videos: peak memory against length, and the real-time factor.

    python benchmarks/bench_longvideo.py [--run runs/quickstart/pocan] [--minutes 1 10] [--size 1280x720]

The targets: a 10-minute 720p video generates with peak memory (RSS of the whole command) within
100 MB of a 1-minute one's, at a real-time factor (wall seconds of the whole command, start-up included,
per second of video) under 0.3. The videos are made once with PyAV (benchmarks/_video.py, x264 ultrafast)
in --cache; without --run a small quickstart-shaped run is trained (bench_generate.py). Also prints the
peak RSS of `python -c "import torch"` measured in the same run, the floor of any torch program.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _timing import record  # benchmarks/_timing.py
from _video import make_footage
from bench_generate import train_small_run

TARGET_RTF = 0.3
TARGET_GROWTH_MB = 100.0


def run_measured(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB, stderr) of one run of ``command``."""
    with tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        text = err.read()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{text[-3000:]}")
    return wall, usage.ru_maxrss / 1024, text  # Linux reports ru_maxrss in KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a trained run directory (default: train a small one)")
    parser.add_argument("--minutes", type=float, nargs=2, default=[1.0, 10.0], metavar=("SHORT", "LONG"))
    parser.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT of the videos")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "avgen-bench-videos")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run or train_small_run(Path(tmp))
        env = {**os.environ, "NO_COLOR": "1"}
        _, torch_rss, _ = run_measured([sys.executable, "-c", "import torch"], env)
        print(f"run {run_dir}; {os.cpu_count()} CPUs; `python -c 'import torch'` peaks at {torch_rss:.0f} MB")
        results = []
        for minutes in args.minutes:
            started = time.perf_counter()
            video = make_footage(args.cache / f"footage_{width}x{height}_{minutes:g}min.mp4", width, height,
                                 minutes * 60, preset="ultrafast")
            made = time.perf_counter() - started
            wall, rss, _ = run_measured([sys.executable, "-m", "avgen", "generate", str(video), "--run", str(run_dir),
                                         "-o", str(Path(tmp) / "out")], env)
            rtf = wall / (minutes * 60)
            results.append((minutes, wall, rss, rtf))
            print(f"{minutes:g} min {width}x{height}: {wall:.1f} s wall, real-time factor {rtf:.3f} (target "
                  f"{TARGET_RTF}: {TARGET_RTF / rtf:.2f}x), peak RSS {rss:.0f} MB"
                  + (f" (video made in {made:.0f} s, not counted)" if made > 1 else ""))
        (short, _, short_rss, _), (long, _, long_rss, long_rtf) = results
        growth = long_rss - short_rss
        record("longvideo", rss_growth_mb=growth, long_rtf=long_rtf, short_rss_mb=short_rss, long_rss_mb=long_rss,
               torch_rss_mb=torch_rss)
        print(f"peak RSS grows by {growth:.0f} MB from {short:g} to {long:g} min (target <= {TARGET_GROWTH_MB:.0f} MB)")


if __name__ == "__main__":
    main()
