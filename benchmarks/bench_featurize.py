"""Frame featurization speed as a fraction of the machine's fp32 matmul rate, measured in the same run.

    python benchmarks/bench_featurize.py [--device cpu|cuda] [--batch 0] [--repeats 3] [--threads N]
                                         [--models resnet50,alexnet,efficientnet_lite0] [--compile]

For each encoder at 224 px: FLOPs per frame (torch.utils.flop_counter), then frames/s of the CNN in
eager NCHW, channels-last, channels-last + bf16 autocast (with its feature error against fp32) and
(with --compile) torch.compile'd channels-last, and of the full ``encode()`` (uint8 frames in, features out)
in fp32 and as ``[featurize] precision = "auto"`` decides on this machine (bf16 where native and the
batch's features agree with fp32 at cosine 0.999), timed in turn so that their ratio sees the same load.
Every row runs batches of ``--batch`` frames; 0 (the default) is the batch featurize itself uses for the
encoder on this device (``auto_batch_size``: on CPU at most the backbone's cache-friendly size).
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import avgen
from _timing import matmul_flops, record, timed, timed_together  # benchmarks/_timing.py
from avgen._core.errors import AvgenError
from avgen._core.precision import MIN_COSINE, autocast_for, check_bf16, choose_precision

BF16_MIN_COSINE = MIN_COSINE  # bf16 features are used only when every frame's cosine to fp32 is at least this


def flops_per_frame(model: torch.nn.Module, size: int, device: torch.device) -> float:
    """Multiply-adds x 2 of one 224 px frame through the CNN, counted by FlopCounterMode."""
    x = torch.zeros(1, 3, size, size, device=device)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    return float(counter.get_total_flops())


def build(name: str, device: torch.device) -> tuple[object, str]:
    """The encoder with ImageNet weights when available offline, else random weights (timing is the same)."""
    try:
        return avgen.create("encoder", name, context={"device": device}), "ImageNet"
    except AvgenError:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return avgen.create("encoder", name, context={"device": device}, weights="none"), "random"


def bench_model(name: str, device: torch.device, batch: int, repeats: int, use_compile: bool) -> list[str]:
    """Timings of one encoder, each as a fraction of the matmul rate measured just before and after it."""
    encoder, weights = build(name, device)
    if batch == 0:  # what featurize runs: the encoder's own batch
        from avgen_vision import auto_batch_size

        batch = encoder.batch_size or auto_batch_size(device, encoder.input_size, encoder.cpu_batch)
    model = encoder.model
    size = encoder.input_size
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=g)
    images_cl = encoder.preprocess(frames)  # normalised, channels-last
    images_nchw = images_cl.contiguous()
    flops = flops_per_frame(model, size, device)
    rows: list[tuple[str, float, str]] = []

    def run(label: str, fn: Callable[[], torch.Tensor], note: str = "") -> None:
        seconds = timed(fn, device, repeats)
        rows.append((label, batch / seconds, note))

    matmul_before = matmul_flops(device, repeats)
    with torch.inference_mode():
        model.to(memory_format=torch.contiguous_format)
        run("eager NCHW fp32", lambda: model(images_nchw))
        model.to(memory_format=torch.channels_last)
        run("channels-last fp32", lambda: model(images_cl))
        if device.type == "cpu":  # what encode() runs in fp32 on the CPU once it has encoded a few hundred frames
            from avgen_vision.encoder import frozen_for_inference

            start = time.perf_counter()
            frozen = frozen_for_inference(model, images_cl)
            if frozen:
                run("channels-last fp32, frozen", lambda: frozen(images_cl),
                    f"TorchScript freeze for inference, {time.perf_counter() - start:.1f} s to build")
        reference = model(images_cl).float()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            bf16 = model(images_cl).float()
        cosine = float(F.cosine_similarity(bf16, reference, dim=1).min())
        rel = float((bf16 - reference).norm() / reference.norm())
        bf16_ok = cosine >= BF16_MIN_COSINE
        verdict = f"min cosine to fp32 {cosine:.5f}, rel. L2 error {rel:.4f}: " + ("usable" if bf16_ok else "NOT usable")

        def autocast_bf16() -> torch.Tensor:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return model(images_cl)

        run("channels-last bf16 autocast", autocast_bf16, verdict)
    if use_compile:
        start = time.perf_counter()
        compiled = torch.compile(model)
        with torch.inference_mode():
            compiled(images_cl)
        compile_s = time.perf_counter() - start
        with torch.inference_mode():
            run("torch.compile channels-last fp32", lambda: compiled(images_cl), f"compile {compile_s:.0f} s")
            if bf16_ok:
                def compiled_bf16() -> torch.Tensor:
                    with torch.autocast(device.type, dtype=torch.bfloat16):
                        return compiled(images_cl)

                start = time.perf_counter()
                compiled_bf16()
                run("torch.compile channels-last bf16", compiled_bf16, f"compile {time.perf_counter() - start:.0f} s")
    encoder.batch_size = batch
    encoder.freeze_after = 0  # encode() as featurize runs it after its first few hundred frames
    choice = choose_precision("auto", device, lambda: check_bf16(lambda: encoder.encode(frames), device))

    def auto() -> torch.Tensor:  # what featurize does with [featurize] precision = "auto"
        with autocast_for(choice.precision, device):
            return encoder.encode(frames)

    both = timed_together({"fp32": lambda: encoder.encode(frames), "auto": auto}, device, max(repeats, 3))
    rows.append(("encode() uint8 -> features, fp32", batch / both["fp32"], "includes normalisation + copy to CPU"))
    rows.append(("encode() uint8 -> features, auto", batch / both["auto"],
                 f"{both['fp32'] / both['auto']:.2f}x fp32: {choice.line('featurize')}"))
    record("featurize", **{f"{name}_auto_speedup": both["fp32"] / both["auto"]})

    matmul_after = matmul_flops(device, repeats)
    matmul = max(matmul_before, matmul_after)  # the conservative choice on a machine with a varying load
    lines = [
        f"{name}: {flops / 1e9:.2f} GFLOP/frame at {size} px, {encoder.dim}-d, {weights} weights, batch {batch}; "
        f"fp32 matmul {matmul_before / 1e9:.0f} GFLOP/s before, {matmul_after / 1e9:.0f} after (ratios use the higher)"
    ]
    for label, fps, note in rows:
        fraction = fps * flops / matmul
        lines.append(f"  {label:36s} {fps:8.1f} frames/s  {fraction * 100:6.1f} % of fp32 matmul  {note}")
    best_fp32 = max(fps for label, fps, _ in rows if "fp32" in label and "encode()" not in label)
    encode_fp32 = next(fps for label, fps, _ in rows if label == "encode() uint8 -> features, fp32")
    lines.append(f"  best fp32 CNN rate: {best_fp32 * flops / matmul * 100:.1f} % of the fp32 matmul rate; featurize's "
                 f"encode() in fp32: {encode_fp32 * flops / matmul * 100:.1f} % (target >= 70 %)")
    record("featurize", **{f"{name}_fraction_of_matmul": best_fp32 * flops / matmul,
                           f"{name}_encode_fraction_of_matmul": encode_fp32 * flops / matmul})
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=0, help="frames per forward pass (0: the batch featurize uses)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--models", default="resnet50,efficientnet_lite0,alexnet")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd variants (minutes of compiling on 2 cores)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{name}, torch {torch.__version__}")
    for model_name in args.models.split(","):
        for line in bench_model(model_name, device, args.batch, args.repeats, args.compile):
            print(line, flush=True)


if __name__ == "__main__":
    main()
