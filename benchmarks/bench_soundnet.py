"""SoundNet conv7 cost: forward + backward for a batch of 40 clips of 0.5 s (the perceptual loss per step).

    python benchmarks/bench_soundnet.py [--device cpu|cuda] [--repeats 5] [--threads N]

Uses the fetched weights when present (`avgen weights fetch soundnet`); the timing does not depend
on the weight values, so without them it times a randomly initialised SoundNet8 and says so.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from avgen.errors import AvgenError
from avgen_soundnet import SoundNet8, load_soundnet8
from avgen_soundnet.perceptual import PerceptualParams, SoundNetPerceptual

BATCH, SAMPLES = 40, 11025  # 40 clips of 0.5 s at 22 050 Hz


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of fn() after one warm-up call."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    try:
        model, weights = load_soundnet8(device=device), "pretrained"
    except AvgenError:
        model, weights = SoundNet8().requires_grad_(False).to(device), "random (weights not fetched)"
    loss = SoundNetPerceptual(model, PerceptualParams(), sample_rate=22050)
    g = torch.Generator().manual_seed(0)
    real = (torch.randn(BATCH, SAMPLES, generator=g) * 0.1).to(device)
    generated = (torch.randn(BATCH, SAMPLES, generator=g) * 0.1).to(device).requires_grad_(True)

    def features_step() -> None:
        generated.grad = None
        model.features(generated, "conv7").sum().backward()

    def loss_step() -> None:
        generated.grad = None
        loss.perceptual(generated, real).backward()

    with torch.no_grad():
        forward = timed(lambda: model.features(real, "conv7"), device, args.repeats)
    features = timed(features_step, device, args.repeats)
    perceptual = timed(loss_step, device, args.repeats)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"SoundNet8 conv7, batch {BATCH} x {SAMPLES} samples (0.5 s at 22 050 Hz), {weights} weights, {name}")
    print(f"  forward only (no grad):                         {forward * 1e3:8.1f} ms")
    print(f"  forward + backward to the waveform:             {features * 1e3:8.1f} ms")
    print(f"  perceptual loss (generated + real) + backward:  {perceptual * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()
