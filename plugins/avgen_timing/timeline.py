"""figures/timeline.png: for a few test clips, the picture's and the sound's timing on one time axis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from avgen import atomic_path

COLOURS = {"real": "tab:green", "raw": "tab:red", "exemplar": "tab:purple"}


def envelope_onsets(envelope: np.ndarray, step: float, level: float = 0.3, gap: float = 0.05) -> np.ndarray:
    """Frames of the onset envelope that are local maxima within +-gap s and at least level x its maximum."""
    if envelope.size == 0 or envelope.max() <= 0:
        return np.zeros(0, dtype=np.int64)
    w = max(1, round(gap / step))
    keep = []
    for j in np.flatnonzero(envelope >= level * envelope.max()):
        lo, hi = max(0, j - w), min(envelope.size, j + w + 1)
        if envelope[j] >= envelope[lo:hi].max() and not (keep and j - keep[-1] <= w):
            keep.append(int(j))
    return np.asarray(keep, dtype=np.int64)


def save_timeline(path: Path, ctx: Any, visuals: list, sounds: dict, offsets: dict, params: Any) -> Path | None:
    """One row per clip: motion energy, contact strength and detected contacts; onsets of each sound; offsets found."""
    from avgen_timing.sync import onset_envelope

    if not visuals:
        return None
    fig = Figure(figsize=(10.0, 2.3 * len(visuals) + 0.6))
    FigureCanvasAgg(fig)
    for row, (clip, vis) in enumerate(zip(ctx.test_clips, visuals)):
        ax = fig.add_subplot(len(visuals), 1, row + 1)
        times = vis.start + np.arange(vis.strength.size) / vis.fps - clip.start
        if vis.energy is not None and vis.energy.max() > 0:
            ax.plot(times, vis.energy / vis.energy.max(), color="0.6", lw=1, label="motion energy")
        if vis.strength.max() > 0:
            ax.plot(times, vis.strength / vis.strength.max(), color="tab:blue", lw=1.2, label="contact strength")
        for k, (t, _conf) in enumerate(vis.events):
            ax.axvline(t - clip.start, color="tab:blue", ls="--", lw=1, label="detected contact" if k == 0 else None)
        parts = []
        for i, (kind, waves) in enumerate(sounds.items()):
            env, step = onset_envelope(waves[row], ctx.sample_rate, params.rate, params.top_db)
            onsets = (envelope_onsets(env, step) + 0.5) * step
            ax.plot(onsets, np.full(onsets.size, -0.08 - 0.08 * i), "v", color=COLOURS.get(kind, f"C{i + 3}"), ms=7,
                    label=f"{kind} sound onsets")
            found = offsets[kind][row]
            parts.append(f"{kind} {'-' if found is None else f'{found * 1000:+.0f} ms'}")
        ax.axvspan(0, clip.duration, color="0.93", zorder=0)
        ax.set_xlim(times[0] if times.size else 0, times[-1] if times.size else clip.duration)
        ax.set_ylim(-0.1 - 0.08 * len(sounds), 1.08)
        ax.set_yticks([])
        ax.set_title(f"{clip.id}: offset {', '.join(parts)}", fontsize=9, loc="left")
        if row == len(visuals) - 1:
            ax.set_xlabel("time from the clip's start (s); shaded: the clip")
        if row == 0:
            ax.legend(fontsize=7, loc="upper right", ncol=3)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    return path
