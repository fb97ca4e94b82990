"""bfloat16 or float32 for a frozen network: used where the hardware computes bf16 natively and a check
on real inputs shows the bf16 result agrees with fp32; decided once and recorded.

``native_bf16`` says whether the device has native bf16 (CPUs: AVX512-BF16 or AMX in /proc/cpuinfo;
CUDA: ``torch.cuda.is_bf16_supported``); ``choose_precision`` runs the check (``[featurize] precision``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

MIN_COSINE = 0.999  # every row of a bf16 result must be at least this close (cosine) to its fp32 row
BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of native bf16 dot products


@dataclass(frozen=True)
class PrecisionChoice:
    """What a run computes in ('fp32' or 'bf16'), the check's result and why."""

    precision: str
    reason: str
    value: float | None = None  # what the check measured (e.g. the min cosine of bf16 rows to fp32), when it ran
    measure: str = "min_cosine"

    def record(self, prefix: str) -> dict[str, Any]:
        """The entries of the run's environment.json, e.g. featurize_precision, featurize_bf16_min_cosine."""
        out: dict[str, Any] = {f"{prefix}_precision": self.precision, f"{prefix}_precision_reason": self.reason}
        if self.value is not None:
            out[f"{prefix}_bf16_{self.measure}"] = round(self.value, 6)
        return out

    def line(self, what: str) -> str:
        value = f"; bf16 {self.measure.replace('_', ' ')} {self.value:.5g}" if self.value is not None else ""
        return f"{what} precision: {self.precision} ({self.reason}{value})"


def cpu_flags(path: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU feature flags of the first processor in /proc/cpuinfo (empty where there is none)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """(whether ``device`` computes bf16 natively, the reason in words)."""
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
        return supported, "CUDA bf16" if supported else "this GPU has no bf16"
    if device.type != "cpu":
        return False, f"no bf16 check for {device.type}"
    flags = cpu_flags()
    found = [flag for flag in BF16_FLAGS if flag in flags]
    if found:
        return True, f"CPU has {' and '.join(found)}"
    if flags:
        return False, "CPU has neither avx512_bf16 nor amx_bf16"
    return False, f"no /proc/cpuinfo; torch CPU capability {torch.backends.cpu.get_cpu_capability()}, bf16 not assumed"


def autocast_for(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` for 'bf16', nothing for 'fp32'."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def min_row_cosine(reference: torch.Tensor, other: torch.Tensor) -> float:
    """The smallest cosine similarity between matching rows (flattened per row), in float64."""
    a = reference.detach().double().reshape(reference.shape[0], -1)
    b = other.detach().double().reshape(other.shape[0], -1)
    return float(F.cosine_similarity(a, b, dim=1, eps=1e-30).min())


def check_bf16(run: Callable[[], torch.Tensor], device: torch.device) -> float:
    """min_row_cosine of ``run()`` in fp32 and under bf16 autocast."""
    reference = run().float()
    with autocast_for("bf16", device):
        low = run().float()
    return min_row_cosine(reference, low)


def choose_precision(requested: str, device: torch.device, check: Callable[[], float | None],
                     passes: Callable[[float], bool] = lambda value: value >= MIN_COSINE,
                     measure: str = "min_cosine") -> PrecisionChoice:
    """'fp32'/'bf16' as the recipe asks; for 'auto', bf16 where native and ``passes(check())``, else fp32.

    ``check`` (e.g. ``lambda: check_bf16(...)`` on the run's first batch: the min cosine, passing at
    MIN_COSINE) runs only when needed; None from it means there was nothing to check on.
    """
    if requested in ("fp32", "bf16"):
        return PrecisionChoice(requested, "set in the recipe")
    native, why = native_bf16(device)
    if not native:
        return PrecisionChoice("fp32", why)
    value = check()
    if value is None:
        return PrecisionChoice("fp32", f"{why}, but no readable first batch to check bf16 on")
    if passes(value):
        return PrecisionChoice("bf16", f"{why}; the first batch agrees with fp32", value, measure)
    return PrecisionChoice("fp32", f"{why}, but bf16 differs from fp32 on the first batch", value, measure)
