"""A run's example clips and their spectrograms, for its report and the compare page's players.

``example_clips`` lists the test clips generated/index.json names as examples (or the clips asked for)
with the sounds the generate stage wrote: ground truth, raw and exemplar. ``spectrogram_panel`` and
``save_spectrograms`` draw dB spectrograms (torch.stft, Hann window) side by side as one PNG.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avgen import atomic_path, read_json

SOUND_KINDS: tuple[tuple[str, str], ...] = (("real", "ground truth"), ("raw", "raw sound"), ("exemplar", "exemplar sound"))


@dataclass
class ExampleClip:
    """One example test clip: its sounds (kind -> wav path, relative to the run) and labels."""

    id: str
    label: str
    predicted: str | None
    exemplar_id: str | None
    sounds: dict[str, str] = field(default_factory=dict)
    spectrogram: str | None = None  # relative path of the side-by-side PNG


def example_clips(run_dir: Path, ids: list[str] | None = None) -> list[ExampleClip]:
    """The run's example clips (generated/index.json "examples", or the test clips ``ids``) with the sounds it wrote."""
    run_dir = Path(run_dir)
    index = read_json(run_dir / "generated" / "index.json")
    if not isinstance(index, dict):
        return []
    by_id = {c.get("id"): c for c in index.get("clips", []) if isinstance(c, dict)}
    class_names = (read_json(run_dir / "dataset.json") or {}).get("class_names") or []
    out = []
    for clip_id in index.get("examples", []) if ids is None else ids:
        clip = by_id.get(clip_id, {})
        predicted = clip.get("predicted")
        sounds = {}
        for kind, _ in SOUND_KINDS:
            rel = f"generated/real/{clip_id}.wav" if kind == "real" else clip.get(kind, f"generated/{kind}/{clip_id}.wav")
            if (run_dir / rel).is_file():
                sounds[kind] = rel
        if not sounds:
            continue
        out.append(ExampleClip(
            id=str(clip_id),
            label=str(clip.get("class") if clip.get("class") is not None else clip.get("label", "?")),
            predicted=(class_names[predicted] if isinstance(predicted, int) and 0 <= predicted < len(class_names)
                       else None if predicted is None else str(predicted)),
            exemplar_id=clip.get("exemplar_id"),
            sounds=sounds,
        ))
    return out


def spectrogram_db(wave: Any, n_fft: int = 1024, hop: int = 256) -> Any:
    """Log-magnitude STFT in dB [bins, frames] of a mono waveform (torch.stft, Hann window)."""
    import torch

    x = torch.as_tensor(wave, dtype=torch.float32).reshape(-1)
    if x.numel() <= n_fft // 2:
        x = torch.nn.functional.pad(x, (0, n_fft // 2 + 1 - x.numel()))
    spec = torch.stft(x, n_fft, hop, window=torch.hann_window(n_fft), center=True, pad_mode="constant", return_complex=True)
    return (20.0 * torch.log10(spec.abs().clamp_min(1e-6))).numpy()


def spectrogram_panel(title: str, wav: Path) -> tuple[str, Any, int, int]:
    """(title, dB spectrogram of the mono mix, sample rate, samples) of a sound file, for ``save_spectrograms``."""
    import soundfile as sf

    wave, rate = sf.read(str(wav), dtype="float32", always_2d=True)
    return title, spectrogram_db(wave.mean(axis=1)), rate, len(wave)


def save_spectrograms(path: Path, panels: list[tuple[str, Any, int, int]], top: float | None = None,
                      width: float = 4.0) -> None:
    """Spectrogram panels side by side as one PNG, coloured over the 80 dB below ``top`` (default: the loudest panel)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    top = max(float(p[1].max()) for p in panels) if top is None else top
    fig = Figure(figsize=(width * len(panels), 3.2))
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.08 if len(panels) > 1 else 0.16, right=0.9 if len(panels) > 1 else 0.8,
                        bottom=0.18, top=0.88, wspace=0.25)
    for i, (title, db, rate, length) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        image = ax.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=top - 80.0, vmax=top,
                          extent=(0.0, length / rate, 0.0, rate / 2000.0))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("time (s)")
        if i == 0:
            ax.set_ylabel("frequency (kHz)")
    fig.colorbar(image, ax=fig.axes, fraction=0.02 if len(panels) > 1 else 0.06, pad=0.02, label="dB")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)


def write_spectrograms(run_dir: Path, clip: ExampleClip) -> str:
    """Ground truth / raw / exemplar spectrograms side by side as one PNG; returns its relative path."""
    panels = [spectrogram_panel(title, run_dir / clip.sounds[kind]) for kind, title in SOUND_KINDS if kind in clip.sounds]
    rel = f"figures/examples/{safe_name(clip.id)}.png"
    save_spectrograms(run_dir / rel, panels)
    return rel


def safe_name(text: str) -> str:
    """The text as a file name: anything but letters, digits, _ . - becomes _."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text) or "clip"
