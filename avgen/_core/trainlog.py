"""What the training loop shows: its epoch, balance and NaN lines, and the loss-curve and loss-balance figures."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from avgen._core import atomic

if TYPE_CHECKING:
    from avgen._core.train import WeightedLoss


def as_terms(values: Tensor, losses: list[WeightedLoss]) -> dict[str, float]:
    names = ["total"] + [loss.name for loss in losses]
    return {name: float(v) for name, v in zip(names, values.tolist())}


def format_terms(values: Tensor, losses: list[WeightedLoss]) -> str:
    return "  ".join(f"{name} {v:.4g}" for name, v in as_terms(values, losses).items())


def epoch_line(entry: dict, epochs: int) -> str:
    line = f"epoch {entry['epoch']}/{epochs}  train " + "  ".join(f"{k} {v:.4g}" for k, v in entry["train"].items())
    if entry["val"] is not None:
        line += "  |  val " + "  ".join(f"{k} {v:.4g}" for k, v in entry["val"].items())
    return line + ("  *" if entry["best"] else "")


def balance_line(entry: dict) -> str:
    """'  grad norm (batch 1): class_nll 0.012 (2 %)  spec_smooth_l1 0.61 (97 %) ...' with the balance factors when on."""
    norms = entry["grad_norms"]
    total = sum(norms.values()) or 1.0
    parts = [f"{name} {value:.3g} ({100 * value / total:.0f} %)" for name, value in norms.items()]
    line = "  grad norm at the generator (batch 1): " + "  ".join(parts)
    if "loss_scales" in entry:
        line += "  |  balance x " + "  ".join(f"{k} {v:.3g}" for k, v in entry["loss_scales"].items())
    return line


def nan_message(logged: Tensor, losses: list[WeightedLoss], epoch: int, step: int, last: Path, good_epoch: int) -> str:
    names = ["total"] + [loss.name for loss in losses]
    bad = [(n, v) for n, v in zip(names, logged.tolist()) if not math.isfinite(v)]
    term = next((n for n, _ in bad if n != "total"), "total")
    kind = "nan" if math.isnan(bad[0][1]) else "inf"
    return (f"training loss became {kind} at epoch {epoch}, step {step} (term {term}); "
            f"the last good checkpoint is kept at {last} (epoch {good_epoch}); lower [train] lr or set grad_clip")


def plot_if_main(rank: int, history: list[dict], run_dir: Path) -> None:
    if rank == 0 and history:
        plot_loss_curve(history, Path(run_dir) / "figures" / "loss_curve.png")


MARGINS = {"left": 0.07, "right": 0.98, "bottom": 0.13, "top": 0.91, "wspace": 0.22}  # of the two-panel figures:
# fixed, as matplotlib's constrained layout costs half of each figure's time (0.3 s)


def plot_loss_curve(history: list[dict], path: Path) -> None:
    """Total train/val loss and each term per epoch, as a PNG (matplotlib, no pyplot state)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8))
    fig.subplots_adjust(**MARGINS)
    total_ax, terms_ax = fig.subplots(1, 2)
    epochs = [h["epoch"] for h in history]
    for split, style in (("train", "-"), ("val", "--")):
        rows = [h[split] for h in history if h.get(split)]
        if not rows:
            continue
        xs = [h["epoch"] for h in history if h.get(split)]
        total_ax.plot(xs, [r["total"] for r in rows], style, marker="o", label=f"{split} total")
        for name in [k for k in rows[0] if k != "total"]:
            terms_ax.plot(xs, [r[name] for r in rows], style, marker=".", label=f"{split} {name}")
    for ax, title in ((total_ax, "weighted total"), (terms_ax, "loss terms (unweighted)")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if epochs:
            ax.legend(fontsize="small")
        values = [v for line in ax.get_lines() for v in line.get_ydata()]
        if values and min(values) > 0:
            ax.set_yscale("log")
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def plot_loss_balance(history: list[dict], losses: list[WeightedLoss], path: Path) -> None:
    """Per epoch: each weighted train term (weight x value) and its gradient norm at the generator, as a PNG."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8))
    fig.subplots_adjust(**MARGINS)
    value_ax, grad_ax = fig.subplots(1, 2)
    for loss in losses:
        rows = [h for h in history if loss.name in (h.get("train") or {})]
        value_ax.plot([h["epoch"] for h in rows], [loss.weight * h["train"][loss.name] for h in rows], marker=".",
                      label=f"{loss.weight:g} x {loss.name}")
        rows = [h for h in history if loss.name in (h.get("grad_norms") or {})]
        grad_ax.plot([h["epoch"] for h in rows], [h["grad_norms"][loss.name] for h in rows], marker=".",
                     label=f"{loss.weight:g} x {loss.name}")
    value_ax.set_title("weighted train loss terms")
    grad_ax.set_title("gradient norm at the generator (first batch)")
    for ax in (value_ax, grad_ax):
        ax.set_xlabel("epoch")
        values = [v for line in ax.get_lines() for v in line.get_ydata()]
        if values:
            ax.legend(fontsize="small")
        if values and min(values) > 0:
            ax.set_yscale("log")
    if not any(h.get("grad_norms") for h in history):
        grad_ax.text(0.5, 0.5, "not recorded (train.grad_norms = false)", ha="center", va="center", transform=grad_ax.transAxes)
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def stderr_console() -> Any:
    from avgen._core.console import make_console

    return make_console(stderr=True)
