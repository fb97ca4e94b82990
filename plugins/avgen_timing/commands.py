"""`avgen timing eval`: a detector's precision and recall against annotated contact times (Greatest Hits layout)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click
import numpy as np

from avgen import AvgenError


def annotated_times(path: Path) -> list[float]:
    """Contact times of a ``{id}_times.txt`` (first column; every row is a contact, whatever its material)."""
    times = []
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if parts:
            try:
                value = float(parts[0])
            except ValueError:
                continue
            if math.isfinite(value) and value >= 0:
                times.append(value)
    return sorted(times)


def match(found: np.ndarray, truth: np.ndarray, tolerance: int) -> tuple[int, list[int]]:
    """One-to-one matches (frame indices) within +-tolerance, each true contact taking the nearest free detection:
    (matches, signed errors found - truth)."""
    free = list(range(len(found)))
    errors = []
    for t in truth:
        near = [j for j in free if abs(int(found[j]) - int(t)) <= tolerance]
        if near:
            j = min(near, key=lambda j: (abs(int(found[j]) - int(t)), j))
            free.remove(j)
            errors.append(int(found[j]) - int(t))
    return len(errors), errors


def evaluate_detector(root: Path, detector: Any, split: str, tolerance: int, progress: Any = None) -> dict[str, Any]:
    """Precision, recall and F1 at +-tolerance frames over the videos of a split, with a chance baseline."""
    from avgen import media

    ids = video_ids(root, split)
    tp = detected = annotated = frames_total = 0
    errors: list[int] = []
    for vid in ids:
        video, times = root / f"{vid}_denoised.mp4", root / f"{vid}_times.txt"
        if not video.is_file() or not times.is_file():
            raise AvgenError(f"{root}: video '{vid}' of {split}.txt has no {video.name} or {times.name}")
        frames = media.read_frames(video, detector.fps, detector.input_size)
        found = np.round(detector.detect(frames)[:, 0].double().numpy() * detector.fps).astype(np.int64)
        truth = np.round(np.array(annotated_times(times)) * detector.fps).astype(np.int64)
        hits, errs = match(found, truth, tolerance)
        tp, detected, annotated = tp + hits, detected + len(found), annotated + len(truth)
        errors += errs
        frames_total += frames.shape[0]
        if progress is not None:
            progress()
    precision = tp / detected if detected else 0.0
    recall = tp / annotated if annotated else 0.0
    # Chance: as many detections at random frames; a detection lands within +-tolerance of some contact with
    # probability (annotated contacts x (2 tolerance + 1) frames) / frames.
    chance = min(1.0, annotated * (2 * tolerance + 1) / max(frames_total, 1))
    return {
        "videos": len(ids), "annotated": annotated, "detected": detected, "matched": tp,
        "precision": round(precision, 4), "recall": round(recall, 4),
        "f1": round(2 * precision * recall / (precision + recall), 4) if tp else 0.0,
        "chance_precision": round(chance, 4), "tolerance_frames": tolerance,
        "frame_error": {str(e): errors.count(e) for e in range(-tolerance, tolerance + 1)},
    }


def parse_params(items: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise AvgenError(f"--param {item!r}: give KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def video_ids(root: Path, split: str) -> list[str]:
    listing = root / f"{split}.txt"
    if not listing.is_file():
        raise AvgenError(f"{listing}: missing; give a folder in the Greatest Hits layout (train.txt, test.txt, "
                         "{id}_denoised.mp4, {id}_times.txt)")
    return [v.strip() for v in listing.read_text(encoding="utf-8").split() if v.strip()]


@click.group("timing")
def timing_group() -> None:
    """Contact detection and audio-video timing (docs/timing.md)."""


@timing_group.command("eval")
@click.argument("root", type=click.Path(file_okay=False, path_type=Path))
@click.option("--detector", "detector_name", default="motion_contacts", show_default=True, help="A detector component.")
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True,
              help="Which split file lists the videos.")
@click.option("--tolerance", type=click.IntRange(0, 30), default=1, show_default=True,
              help="A detection within this many frames of an annotated contact is correct.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="A detector parameter (avgen show NAME), e.g. --param threshold=0.3; repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def eval_command(root: Path, detector_name: str, split: str, tolerance: int, params: tuple[str, ...], as_json: bool) -> None:
    """Precision and recall of a contact detector on the annotated videos of ROOT (Greatest Hits layout)."""
    from avgen import make_console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    import avgen

    if not root.is_dir():
        raise AvgenError(f"{root}: no such folder")
    detector = avgen.create("detector", detector_name, **parse_params(params))
    listing = root / f"{split}.txt"
    count = len(listing.read_text(encoding="utf-8").split()) if listing.is_file() else 0
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=make_console(stderr=True), transient=True) as bar:
        task = bar.add_task(f"detecting contacts ({detector_name})", total=count)
        result = evaluate_detector(root, detector, split, tolerance, lambda: bar.advance(task))
    result = {"detector": detector_name, "split": split, **result}
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{detector_name} on {root} ({split}, {result['videos']} videos, {result['annotated']} contacts): "
               f"precision {result['precision']:.3f}, recall {result['recall']:.3f}, F1 {result['f1']:.3f} at "
               f"+-{tolerance} frame(s); chance precision {result['chance_precision']:.3f}; "
               f"frame errors {result['frame_error']}")


@timing_group.command("fit")
@click.argument("root", type=click.Path(file_okay=False, path_type=Path))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Head file to write (default: $AVGEN_HOME/weights/timing/learned_contacts.safetensors, "
                   "which learned_contacts loads).")
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True,
              help="Which split file lists the training videos.")
@click.option("--epochs", type=click.IntRange(1, 100_000), default=300, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def fit_command(root: Path, out: Path | None, split: str, epochs: int, seed: int) -> None:
    """Train learned_contacts' head on the annotated contacts of ROOT's videos (Greatest Hits layout)."""
    from avgen import make_console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from avgen import media
    from avgen_timing.learned import SETTINGS, default_weights, fit_head, frame_features, labels_for, save_head

    ids = video_ids(root, split)
    samples = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=make_console(stderr=True), transient=True) as bar:
        task = bar.add_task("motion features", total=len(ids))
        for vid in ids:
            frames = media.read_frames(root / f"{vid}_denoised.mp4", SETTINGS["fps"], SETTINGS["input_size"])
            features = frame_features(frames, SETTINGS)
            samples.append((features, labels_for(annotated_times(root / f"{vid}_times.txt"), features.shape[0], SETTINGS["fps"])))
            bar.advance(task)
    head = fit_head(samples, epochs=epochs, seed=seed)
    path = save_head(head, out or default_weights(), {"root": str(root.resolve()), "split": split, "videos": len(ids),
                                                       "epochs": epochs, "seed": seed})
    click.echo(f"{path}: head trained on {len(ids)} videos ({sum(int(l.sum()) for _, l in samples)} contacts)")
