"""Scale: featurize + fit on synthetic_stream at growing sizes; peak memory must not grow with the data.

Each size runs in its own process (fresh cache), which samples /proc/self/status while it
prepares, featurizes and trains: RssAnon (heap: must stay flat) and RssFile (pages of the
memory-mapped split and representation files: reclaimable, bounded by the page cache). The
parent reports the child's ru_maxrss, clips/s, the bytes on disk (cache entries + the mapped
scratch representation) and how peak RssAnon changes from the smallest to the largest size.

    python benchmarks/bench_scale.py                  # 1k, 4k, 16k (VIG size) clips of 10 s at 8 kHz: ~11 min on
                                                      # 2 quiet cores, needs ~15 GiB free disk (see --tmp)
    python benchmarks/bench_scale.py --sizes 200,800 --clip-seconds 2

Encoder: the example plugin's mean_color (per-frame colour mean/std, 6-d; 1 fps, 32 px), so the
cost is data synthesis, I/O and the LSTM, not a CNN.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

STATUS_FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")


def read_status() -> dict[str, int]:
    """Current memory of this process in bytes, from /proc/self/status."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in STATUS_FIELDS:
                out[name] = int(value.split()[0]) * 1024
    return out


class PeakSampler:
    """Samples read_status() every ``interval`` seconds in a thread; keeps the peak of each field per stage."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval, self.stage = interval, "start"
        self.peaks: dict[str, dict[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval)

    def sample(self) -> None:
        peaks = self.peaks.setdefault(self.stage, {})
        for name, value in read_status().items():
            peaks[name] = max(peaks.get(name, 0), value)

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def recipe_dict(args: argparse.Namespace, clips: int) -> dict[str, Any]:
    return {
        "run": {"name": f"scale{clips}", "seed": 0},
        "data": {"name": "synthetic_stream", "clips": clips, "clip_seconds": args.clip_seconds,
                 "sample_rate": args.sample_rate, "seed": 0},
        "encoder": {"name": "mean_color", "fps": args.fps, "input_size": args.input_size},
        "representation": {"name": "stft", "n_fft": args.n_fft, "hop_length": args.hop_length,
                           "sample_rate": args.sample_rate},
        "generator": {"name": "can_lstm", "hidden": 128},
        "loss": [{"name": "class_nll", "weight": 1.0}, {"name": "spec_smooth_l1", "weight": 50.0}],
        "train": {"batch_size": 40, "epochs": args.epochs},
    }


def child(args: argparse.Namespace) -> None:
    """One size: prepare, featurize, fit in this process; prints one JSON line."""
    import torch
    from rich.console import Console

    from avgen._core.cache import FeatureCache
    from avgen._core.plugins import get_plugins
    from avgen._core.recipe import validate_recipe
    from avgen._core.runner import Run

    get_plugins()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    recipe = validate_recipe(recipe_dict(args, args.child), new=True)  # a new run: components at their current versions
    cache = FeatureCache(work / "cache")
    run = Run(recipe, work / "run", torch.device("cpu"), console=Console(stderr=True, quiet=True), cache=cache,
              num_workers=args.workers)
    seconds: dict[str, float] = {}
    with PeakSampler() as sampler:
        for stage in ("prepare", "featurize", "fit"):
            sampler.stage = stage
            started = time.perf_counter()
            run.execute(only=stage)
            seconds[stage] = time.perf_counter() - started
        sampler.stage = "end"
    rep_bytes = sum(run.featurized(s).rep.numel() * 4 for s in ("train", "val", "test") if run.featurized(s).rep is not None)
    print(json.dumps({
        "clips": args.child, "seconds": seconds, "peaks": sampler.peaks, "cache_bytes": cache.info()["bytes"],
        "cache_entries": cache.info()["entries"], "rep_scratch_bytes": rep_bytes,
    }))


def run_size(args: argparse.Namespace, clips: int) -> dict[str, Any]:
    """Run one size in a child process with its own cache folder; adds the child's ru_maxrss."""
    with tempfile.TemporaryDirectory(prefix=f"bench_scale{clips}.", dir=args.tmp) as work:
        command = [sys.executable, __file__, "--child", str(clips), "--work", work] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
            if k not in ("child", "work", "sizes", "json") and v is not None]
        env = {**os.environ, "AVGEN_HOME": str(Path(work) / "home"), "AVGEN_CACHE": str(Path(work) / "cache")}
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, env=env, text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        if status != 0:
            raise SystemExit(f"size {clips}: child failed with status {status}")
        result = json.loads(out.strip().splitlines()[-1])
        result["ru_maxrss"] = usage.ru_maxrss * 1024
        return result


def summary(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    mib = 1 << 20
    lines = [f"synthetic_stream, {args.clip_seconds:g} s at {args.sample_rate} Hz, mean_color (fps {args.fps:g}, "
             f"{args.input_size} px), stft {args.n_fft}/{args.hop_length}, can_lstm, {args.epochs} epoch(s), "
             f"{args.workers} loader workers, {args.threads} torch threads",
             "| clips | featurize clips/s | fit clips/s | on disk (MiB) | peak RssAnon (MiB) | peak RssFile (MiB) "
             "| ru_maxrss (MiB) | ru_maxrss / on disk | ru_maxrss - on disk (MiB) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        disk = r["cache_bytes"] + r["rep_scratch_bytes"]
        anon = max(p.get("RssAnon", 0) for p in r["peaks"].values())
        file = max(p.get("RssFile", 0) for p in r["peaks"].values())
        train_clips = r["clips"] * 0.8 * args.epochs
        lines.append(f"| {r['clips']} | {r['clips'] / r['seconds']['featurize']:.1f} | {train_clips / r['seconds']['fit']:.1f} "
                     f"| {disk / mib:.0f} | {anon / mib:.0f} | {file / mib:.0f} | {r['ru_maxrss'] / mib:.0f} "
                     f"| {r['ru_maxrss'] / max(disk, 1):.3f} | {(r['ru_maxrss'] - disk) / mib:.0f} |")
    first, last = results[0], results[-1]
    anon = [max(p.get("RssAnon", 0) for p in r["peaks"].values()) for r in (first, last)]
    disk = [r["cache_bytes"] + r["rep_scratch_bytes"] for r in (first, last)]
    lines.append(f"from {first['clips']} to {last['clips']} clips: data on disk x{disk[1] / max(disk[0], 1):.1f} "
                 f"(+{(disk[1] - disk[0]) / mib:.0f} MiB), peak RssAnon x{anon[1] / max(anon[0], 1):.2f} "
                 f"(+{(anon[1] - anon[0]) / mib:.0f} MiB), peak ru_maxrss x{last['ru_maxrss'] / first['ru_maxrss']:.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,4000,16000", help="comma-separated numbers of clips")
    parser.add_argument("--clip-seconds", type=float, default=10.0)
    parser.add_argument("--sample-rate", type=int, default=8000)
    parser.add_argument("--fps", type=float, default=1.0, help="mean_color frames per second")
    parser.add_argument("--input-size", type=int, default=32, help="mean_color frame size (rendered at this size)")
    parser.add_argument("--n-fft", type=int, default=2048)
    parser.add_argument("--hop-length", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2, help="featurize DataLoader workers")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in the child")
    parser.add_argument("--tmp", default=None, help="folder for the caches (on disk, not tmpfs)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args)
        return
    args.tmp = args.tmp or tempfile.gettempdir()
    results = []
    for clips in (int(s) for s in args.sizes.split(",")):
        started = time.perf_counter()
        results.append(run_size(args, clips))
        print(f"{clips} clips: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    print(summary(results, args))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
