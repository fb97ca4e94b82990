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


def save_sync_figure(path: Path, row: dict, strength: np.ndarray, fps: float, envelope: np.ndarray, step: float,
                     found: np.ndarray, truth: np.ndarray, pairs: list[tuple[int, int]]) -> Path:
    """`avgen timing sync --plot`: one video on one time axis. Above, the picture: the detector's contact strength
    and its contacts (with ``--reference``: the video's own soundtrack onsets instead); below, the sound: the
    soundtrack's onset envelope and the onsets scored against. Matched ones are green, the others red; the title
    gives precision, recall, F1 and the offset."""
    fig = Figure(figsize=(10.0, 3.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if strength.size and strength.max() > 0:
        ax.plot(np.arange(strength.size) / fps, 0.55 + 0.45 * strength / strength.max(), color="tab:blue", lw=1,
                label="contact strength (picture)")
    if envelope.size and envelope.max() > 0:
        ax.plot((np.arange(envelope.size) + 0.5) * step, 0.45 * envelope / envelope.max(), color="0.55", lw=0.8,
                label="onset envelope (sound)")
    hit_found, hit_truth = {j for j, _ in pairs}, {i for _, i in pairs}
    reference = row.get("reference") is not None
    for times, hits, y, marker, what in ((found, hit_found, 1.04, "v", "its onsets" if reference else "contacts"),
                                        (truth, hit_truth, -0.04, "^", "reference onsets" if reference else "onsets")):
        for matched, colour in ((True, "tab:green"), (False, "tab:red")):
            picked = np.asarray([t for k, t in enumerate(times) if (k in hits) == matched])
            if picked.size:
                ax.plot(picked, np.full(picked.size, y), marker, color=colour, ms=7, ls="none",
                        label=f"{what}, {'matched' if matched else 'not matched'}")
    ax.axhline(0.5, color="0.85", lw=0.8)
    ax.set_xlim(0, max(float(row["seconds"]), 1e-3))
    ax.set_ylim(-0.12, 1.12)
    ax.set_yticks([0.22, 0.78], ["sound", "picture"] if not reference else ["reference", "video"])
    offset = (f"{row['offset_ms']:+.0f} ms" if row["offset_ms"] is not None else
              "? (no lag stands out)" if row.get("offset_stands_out") is False else "-")
    ax.set_title(f"{Path(row['video']).name}: P {row['precision']:.2f}  R {row['recall']:.2f}  F1 {row['f1']:.2f}  "
                 f"({row['matched']} of {row['onsets']} onsets, {row['found']} found)   offset {offset}",
                 fontsize=9, loc="left")
    ax.set_xlabel("seconds")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3, frameon=False)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    return path
