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
