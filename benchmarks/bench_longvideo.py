"""`avgen generate` on long camera-shaped videos: peak memory against length, and the real-time factor.

    python benchmarks/bench_longvideo.py [--run runs/quickstart/pocan] [--minutes 1 10] [--size 1280x720]
        [--mode windows|events] [--contacts-per-minute 3.6] [--detector NAME] [--profile]

--mode windows (the default): clip-length windows every half clip, each sounding. The targets: a 10-minute
720p video generates with peak memory (RSS of the whole command) within 100 MB of a 1-minute one's, at a
real-time factor (wall seconds of the whole command, start-up included, per second of video) under 0.3.

--mode events: one sound at each contact `avgen generate --mode events` detects (the run's own detector, else
--detector, else the fallback region_contacts), on videos of a ball dropped onto a floor a few dozen times in
10 minutes (benchmarks/_video.py, make_contact_footage: the contacts are in the picture, and a knock in its
sound). Target: the whole command on the 10-minute 720p video at a real-time factor <= 0.15 on 2 cores. Prints
the detections against the true contact times, and --profile times the stages in this process (reading the
frames the detector needs, the detector, the contacts' windows, their decode).

Both modes also time the decode-only floor in the same run (PyAV decoding every frame with FFmpeg's threads,
converting none) and print the command's wall time as a multiple of it. The videos are made once with PyAV
(x264 ultrafast) in --cache; without --run a small quickstart-shaped run is trained (bench_generate.py). Also
prints the peak RSS of `python -c "import torch"` measured in the same run, the floor of any torch program.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av

from _timing import record  # benchmarks/_timing.py
from _video import make_contact_footage, make_footage
from bench_generate import train_small_run
from bench_realvideo import decode_floor

TARGET_RTF = 0.3
TARGET_EVENTS_RTF = 0.15
TARGET_GROWTH_MB = 100.0
MATCH_SECONDS = (0.1, 0.25)  # a detection within this of a true contact finds it


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


def matched(found: list[float], truth: list[float], within: float) -> int:
    """How many true contact times have a detection within ``within`` seconds."""
    return sum(any(abs(f - t) <= within for f in found) for t in truth)


def convert_floor(video: Path, size: int, interpolation: str) -> float:
    """Seconds to decode every frame in one pass (one container, FFmpeg's frame threads) and scale each to ``size``
    RGB with ``interpolation`` (read_frames uses "BILINEAR"), keeping none: one pass of the detector's reading."""
    started = time.perf_counter()
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            frame.reformat(width=size, height=size, format="rgb24", interpolation=interpolation).to_ndarray()
    return time.perf_counter() - started


def profile_in_child(video: Path, run_dir: Path, detector_name: str | None, duration: float, env: dict[str, str]) -> None:
    """``profile_events`` in a fresh process with the threads `avgen generate` uses (all cores, OpenMP threads that
    sleep while they wait: OMP_WAIT_POLICY=PASSIVE before torch loads), so its stages run as in the command."""
    command = [sys.executable, __file__, "--profile-video", str(video), "--run", str(run_dir),
               "--profile-seconds", str(duration)] + (["--detector", detector_name] if detector_name else [])
    done = subprocess.run(command, env={**env, "OMP_WAIT_POLICY": "PASSIVE"}, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"profiling failed:\n{done.stderr[-3000:]}")
    print(done.stdout, end="")


def profile_events(video: Path, run_dir: Path, detector_name: str | None, duration: float) -> None:
    """Time the stages of generating by events in this process, through avgen's public API: loading the run,
    reading the frames the detector needs (plugins/avgen_timing/chunks.py's own chunks: 20 s with 1 s margins through
    one reader; and decoding and scaling them in one pass, with read_frames' scaler and a faster one), the detector, the
    contacts' windows (frames, encoder, generator) and their decode."""
    import torch

    import avgen

    started = time.perf_counter()
    model = avgen.load(run_dir, device="cpu")
    detector = avgen.create("detector", detector_name) if detector_name else model.detector
    if detector is None:
        detector = avgen.create("detector", "region_contacts")
    loaded = time.perf_counter() - started
    from avgen_timing.chunks import chunks, owned  # the plugin's own reading: one reader, overlaps kept

    t_read = t_detect = 0.0
    found = []
    stream = chunks(detector, video, duration)
    while True:
        began = time.perf_counter()
        item = next(stream, None)
        t_read += time.perf_counter() - began
        if item is None:
            break
        start, lo, frames = item
        began = time.perf_counter()
        events = detector.detect(frames).reshape(-1, 2).float()
        t_detect += time.perf_counter() - began
        times = events[:, 0] + lo
        found += times[owned(times, start)].tolist()
    count = round(duration * detector.fps)
    t_once = convert_floor(video, detector.input_size, "BILINEAR")
    t_fast = convert_floor(video, detector.input_size, "FAST_BILINEAR")
    began = time.perf_counter()
    outputs = model.window_outputs(video, found) if found else None
    t_windows = time.perf_counter() - began
    began = time.perf_counter()
    if outputs is not None:
        model.raw_sound(outputs["rep"])
    t_decode = time.perf_counter() - began
    floor = decode_floor(video, 1)
    print(f"  profile ({torch.get_num_threads()} torch threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')}), "
          f"{duration:.0f} s of video, {len(found)} detections: "
          f"load the run {loaded:.2f} s; read {count} frames at {detector.fps:g} fps, {detector.input_size} px: "
          f"{t_read:.1f} s in the plugin's chunks (one reader); one pass decoding and scaling every frame {t_once:.1f} s ({t_fast:.1f} s with "
          f"FFmpeg's fast bilinear scaler), decoding alone {floor:.1f} s; "
          f"detector {t_detect:.1f} s ({t_detect / count * 1e3:.2f} ms/frame); windows (frames, encoder, generator) "
          f"{t_windows:.2f} s; decode {t_decode:.2f} s")
    record("longvideo_events_profile", read_chunked_s=t_read, read_once_s=t_once, read_once_fast_s=t_fast, detector_s=t_detect,
           windows_s=t_windows, decode_s=t_decode, load_s=loaded, floor_s=floor)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a trained run directory (default: train a small one)")
    parser.add_argument("--minutes", type=float, nargs=2, default=[1.0, 10.0], metavar=("SHORT", "LONG"))
    parser.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT of the videos")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "avgen-bench-videos")
    parser.add_argument("--mode", choices=["windows", "events"], default="windows",
                        help="what `avgen generate` makes: sounding windows (default) or one sound per detected contact")
    parser.add_argument("--contacts-per-minute", type=float, default=3.6,
                        help="--mode events: contacts in the videos (default 3.6: 36 in 10 minutes)")
    parser.add_argument("--detector", help="--mode events: the detector (default: the run's own, else region_contacts)")
    parser.add_argument("--profile", action="store_true", help="--mode events: also time its stages (in a child process)")
    parser.add_argument("--profile-video", type=Path, help=argparse.SUPPRESS)  # the child of --profile
    parser.add_argument("--profile-seconds", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.profile_video is not None:
        profile_events(args.profile_video, args.run, args.detector, args.profile_seconds)
        return
    width, height = (int(v) for v in args.size.lower().split("x"))
    events = args.mode == "events"
    target = TARGET_EVENTS_RTF if events else TARGET_RTF

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run or train_small_run(Path(tmp))
        env = {**os.environ, "NO_COLOR": "1"}
        _, torch_rss, _ = run_measured([sys.executable, "-c", "import torch"], env)
        print(f"run {run_dir}; {os.cpu_count()} CPUs; `python -c 'import torch'` peaks at {torch_rss:.0f} MB; "
              f"mode {args.mode}")
        results = []
        for minutes in args.minutes:
            started = time.perf_counter()
            truth: list[float] = []
            if events:
                contacts = max(1, round(args.contacts_per_minute * minutes))
                video, truth = make_contact_footage(
                    args.cache / f"contacts_{width}x{height}_{minutes:g}min_{contacts}.mp4", width, height,
                    minutes * 60, contacts)
            else:
                video = make_footage(args.cache / f"footage_{width}x{height}_{minutes:g}min.mp4", width, height,
                                     minutes * 60, preset="ultrafast")
            made = time.perf_counter() - started
            out = Path(tmp) / "out" / f"{minutes:g}.mp4"
            command = [sys.executable, "-m", "avgen", "generate", str(video), "--run", str(run_dir), "-o", str(out)]
            if events:
                command += ["--mode", "events", "--onsets-out", str(out.with_suffix(".onsets.json"))]
                command += ["--detector", args.detector] if args.detector else []
            floor = decode_floor(video, 1)
            wall, rss, _ = run_measured(command, env)
            rtf = wall / (minutes * 60)
            results.append((minutes, wall, rss, rtf, floor))
            print(f"{minutes:g} min {width}x{height}: {wall:.1f} s wall, real-time factor {rtf:.3f} (target "
                  f"{target}: {target / rtf:.2f}x), {wall / floor:.1f}x the decode-only floor ({floor:.1f} s, "
                  f"RTF {floor / (minutes * 60):.3f}), peak RSS {rss:.0f} MB"
                  + (f" (video made in {made:.0f} s, not counted)" if made > 1 else ""))
            if events:
                found = [c["time"] for c in json.loads(out.with_suffix(".onsets.json").read_text())["onsets"]]
                print(f"  {len(found)} detections for {len(truth)} contacts; contacts found within "
                      + ", ".join(f"{w * 1e3:.0f} ms: {matched(found, truth, w)}" for w in MATCH_SECONDS))
                if args.profile:
                    profile_in_child(video, run_dir, args.detector, minutes * 60, env)
        (short, _, short_rss, _, _), (long, long_wall, long_rss, long_rtf, long_floor) = results
        growth = long_rss - short_rss
        prefix = "events_" if events else ""
        record("longvideo", **{f"{prefix}rss_growth_mb": growth, f"{prefix}long_rtf": long_rtf,
                               f"{prefix}short_rss_mb": short_rss, f"{prefix}long_rss_mb": long_rss,
                               f"{prefix}long_floor_ratio": long_wall / long_floor, "torch_rss_mb": torch_rss})
        print(f"peak RSS grows by {growth:.0f} MB from {short:g} to {long:g} min (target <= {TARGET_GROWTH_MB:.0f} MB)")


if __name__ == "__main__":
    main()
