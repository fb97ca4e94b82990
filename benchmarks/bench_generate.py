"""Real-time factor of `avgen generate` on a 10 s video, after the model is loaded.

    python benchmarks/bench_generate.py [--run runs/quickstart/can] [--video V.mp4] [--threads N] [--repeats 3]

Without --run it trains a small run like the quickstart's CAN (EfficientNet-Lite0 at 8 fps,
STFT 2048/512, 22 050 Hz, 0.5 s clips; 4 videos, 2 epochs: speed does not depend on how well
the model learned) in a temporary folder. Without --video it uses a 10 s video of the
synthetic set. Prints the time of each phase (frame features, LSTM, Griffin-Lim decode or
exemplar retrieval, overlap-add) for raw and exemplar sound, the real-time factor (seconds of
work per second of video) and its ratio to the target of 0.1.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

TARGET_RTF = 0.1

RECIPE = """
[run]
name = "bench_generate"
seed = 0

[data]
name = "synthetic_hits"
root = "{root}"
videos = 4
clip_seconds = 0.5
sample_rate = 22050

[encoder]
name = "efficientnet_lite0"
fps = 8

[representation]
name = "stft"
n_fft = 2048
hop_length = 512

[generator]
name = "can_lstm"

[[loss]]
name = "class_nll"

[[loss]]
name = "spec_smooth_l1"
weight = 50.0

[train]
epochs = 2
"""


def train_small_run(folder: Path) -> Path:
    """A quickstart-shaped CAN run trained for 2 epochs on 4 synthetic videos; its run directory."""
    recipe = folder / "bench_generate.toml"
    recipe.write_text(RECIPE.format(root=folder / "data"))
    print(f"training a small run in {folder} (pass --run DIR to use your own) ...", flush=True)
    done = subprocess.run([sys.executable, "-m", "avgen", "run", str(recipe), "--out", str(folder / "runs")],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"training the small run failed:\n{done.stderr[-3000:]}")
    return folder / "runs" / "bench_generate"


def ten_second_video(run_dir: Path) -> Path:
    """The first video of the run's dataset that lasts at least 10 s."""
    import avgen

    recipe = avgen.validate_recipe(avgen.read_recipe(run_dir), run_dir / "recipe.toml")
    root = Path(recipe.data.params.get("root", "."))
    for video in sorted(root.rglob("*.mp4")):
        if avgen.probe(video).duration >= 10.0:
            return video
    raise SystemExit(f"no video of 10 s or more under {root}; pass --video")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a trained run directory (default: train a small one)")
    parser.add_argument("--video", type=Path, help="the video to generate sound for (default: a 10 s synthetic one)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--encoder-precision", choices=["fp32", "bf16"],
                        help="time the encoder at this precision instead of the run's (what a recipe with "
                             "[encoder] precision = 'bf16' would give; its features differ slightly from fp32)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import avgen
    from _timing import record  # benchmarks/_timing.py

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run or train_small_run(Path(tmp))
        video = args.video or ten_second_video(run_dir)
        device = torch.device(args.device)
        started = time.perf_counter()
        model = avgen.load(run_dir, device)
        load_seconds = time.perf_counter() - started
        recipe, encoder = model.recipe, model.encoder
        if args.encoder_precision:
            encoder.precision = args.encoder_precision
        bank = model.bank()
        duration = avgen.probe(video).duration
        print(f"video {video} ({duration:.1f} s), run {run_dir}, {args.threads} threads, {args.device}, "
              f"encoder {recipe.encoder.name} at {encoder.fps} fps in {encoder.precision}; "
              f"model load {load_seconds:.2f} s (not counted)")
        for mode, kwargs in (("raw", {}), ("exemplar", {"bank": bank})):
            model.sound(video, **kwargs)  # warm-up
            runs = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                _, summary = model.sound(video, **kwargs)
                runs.append((time.perf_counter() - t0, summary["timings"]))
            seconds, timings = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
            rtf = seconds / duration
            phases = ", ".join(f"{k} {v:.3f} s" for k, v in timings.items())
            record("generate", **{f"{mode}_rtf": rtf})
            print(f"{mode:9s} {seconds:6.3f} s  RTF {rtf:.3f}  target {TARGET_RTF} -> {TARGET_RTF / rtf:.2f}x the target "
                  f"(median of {args.repeats}; {phases}; spread {statistics.pstdev(r[0] for r in runs):.3f} s)")


if __name__ == "__main__":
    main()
