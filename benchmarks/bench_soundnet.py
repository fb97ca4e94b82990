"""SoundNet conv7 cost: forward + backward for a batch of 40 clips of 0.5 s (the perceptual loss per step).

    python benchmarks/bench_soundnet.py [--device cpu|cuda] [--repeats 5] [--threads N]

Each time is also given as a fraction of the machine's fp32 matmul rate measured in the same run
(FLOPs counted by torch.utils.flop_counter), and forward + backward against the expected 0.1 s.

Uses the fetched weights when present (`avgen weights fetch soundnet`); the timing does not depend
on the weight values, so without them it times a randomly initialised SoundNet8 and says so.
"""

from __future__ import annotations

import argparse

import torch

from avgen._core.errors import AvgenError
from avgen_soundnet import SoundNet8, load_soundnet8
from avgen_soundnet.perceptual import PerceptualParams, SoundNetPerceptual
from _timing import counted_flops, matmul_flops, record, timed  # benchmarks/_timing.py

BATCH, SAMPLES = 40, 11025  # 40 clips of 0.5 s at 22 050 Hz
DESIGN_SECONDS = 0.1  # the expected forward + backward time on 2 quiet cores (docs/benchmarks.md)


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

    def forward_step() -> None:
        with torch.no_grad():
            model.features(real, "conv7")

    rate_before = matmul_flops(device, args.repeats)
    steps = {
        "forward only (no grad):": forward_step,
        "forward + backward to the waveform:": features_step,
        "perceptual loss (generated + real) + backward:": loss_step,
    }
    seconds = {label: timed(fn, device, args.repeats) for label, fn in steps.items()}
    flops = {label: counted_flops(fn) for label, fn in steps.items()}
    rate = max(rate_before, matmul_flops(device, args.repeats))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"SoundNet8 conv7, batch {BATCH} x {SAMPLES} samples (0.5 s at 22 050 Hz), {weights} weights, {name}")
    print(f"fp32 matmul {rate_before / 1e9:.0f} GFLOP/s before, {rate / 1e9:.0f} best (ratios use the best)")
    for label in steps:
        achieved = flops[label] / seconds[label]
        print(f"  {label:<48}{seconds[label] * 1e3:8.1f} ms  {flops[label] / 1e9:6.1f} GFLOP  "
              f"{achieved / 1e9:6.0f} GFLOP/s = {100 * achieved / rate:5.1f} % of fp32 matmul")
    backward = seconds["forward + backward to the waveform:"]
    record("soundnet", forward_backward_seconds=backward)
    print(f"forward + backward: {backward * 1e3:.1f} ms vs the expected {DESIGN_SECONDS * 1e3:.0f} ms: {DESIGN_SECONDS / backward:.2f}x the expected speed")


if __name__ == "__main__":
    main()
