"""Timing helpers shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
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


def timed_together(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int) -> dict[str, float]:
    """Median seconds of each fn, calling them in turn (one warm-up each): on a machine whose load varies,
    the variants see the same load, so their ratio holds better than separate ``timed`` runs."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    sync(device)
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def matmul_flops(device: torch.device, repeats: int) -> float:
    """fp32 FLOP/s of a large square sgemm (2 n^3 FLOPs), the machine's practical peak."""
    n = 4096 if device.type == "cuda" else 2048
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device)
    b = torch.randn(n, n, generator=g).to(device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # true fp32, as the models run
    return 2 * n**3 / timed(lambda: a @ b, device, max(repeats, 5))


def counted_flops(fn: Callable[[], object]) -> float:
    """FLOPs of one fn() call (forward and backward if it does both), counted by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def record(bench: str, **values: float) -> None:
    """Append {"bench": ..., values} as a JSON line to $AVGEN_BENCH_JSON (for the slow regression test)."""
    import json
    import os

    path = os.environ.get("AVGEN_BENCH_JSON")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps({"bench": bench, **{k: float(v) for k, v in values.items()}}) + "\n")
