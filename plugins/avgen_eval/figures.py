"""Figures the metrics write into the run directory (matplotlib without pyplot: no global state)."""

from __future__ import annotations

from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from avgen import atomic_path


def save_confusion_matrix(path: Path, counts: torch.Tensor, class_names: list[str], title: str = "") -> Path:
    """Row-normalized confusion matrix (row = true class) as a PNG, with counts as cell text when small."""
    counts = counts.double()
    rows = counts.sum(dim=1, keepdim=True).clamp_min(1)
    rates = (counts / rows).numpy()
    n = len(class_names)
    size = max(4.0, 0.45 * n + 2.0)
    fig = Figure(figsize=(size + 1.0, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(rates, vmin=0.0, vmax=1.0, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_xticks(range(n), class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title, fontsize=10)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if counts[i, j] > 0:
                    ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path


def save_bar_chart(path: Path, groups: list[str], bars: list[tuple[str, list[float | None], list[float | None], bool]],
                   ylabel: str = "", title: str = "") -> Path:
    """Grouped bars: one group per metric, one bar per (label, values, std or None, is_baseline) in order; error
    bars where a std is given, baselines in greys with hatching, a missing value leaves a gap."""
    import numpy as np

    n = max(len(bars), 1)
    width = 0.8 / n
    fig = Figure(figsize=(min(16.0, 3.5 + len(groups) * (0.4 + 0.16 * n)), 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colours = iter(["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"] * 8)
    greys = iter(["#bbbbbb", "#888888", "#dddddd", "#555555", "#aaaaaa", "#777777"] * 8)
    x = np.arange(len(groups), dtype=float)
    for i, (label, values, stds, baseline) in enumerate(bars):
        shown = [j for j, v in enumerate(values) if v is not None]
        heights = [values[j] for j in shown]
        errors = [stds[j] if stds[j] is not None else 0.0 for j in shown]
        colour = next(greys) if baseline else next(colours)
        ax.bar(x[shown] - 0.4 + width * (i + 0.5), heights, width, label=label, color=colour,
               hatch="//" if baseline else None, edgecolor="#444444" if baseline else colour, linewidth=0.5,
               yerr=errors if any(stds[j] is not None for j in shown) else None, capsize=3, error_kw={"linewidth": 1})
    ax.set_xticks(x, groups)
    ax.set_xlim(-0.5, len(groups) - 0.5)
    ax.set_ylim(0.0, 1.05)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path
