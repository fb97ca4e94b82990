"""`avgen timing eval | fit | sync`: score a detector on annotated contacts, train one from any footage with sound,
and score picture-sound agreement of any videos with sound."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import numpy as np

from avgen import AvgenError

from avgen_timing.footage import annotated_times, match_times


def match(found: np.ndarray, truth: np.ndarray, tolerance: int) -> tuple[int, list[int]]:
    """One-to-one matches (frame indices) within +-tolerance, each true contact taking the nearest free detection:
    (matches, signed errors found - truth)."""
    errors = [round(e) for e in match_times(np.asarray(found, dtype=np.float64), np.asarray(truth, dtype=np.float64),
                                            tolerance)]  # frame indices are whole numbers: exact as floats
    return len(errors), errors


def evaluate_detector(root: Path, detector: Any, split: str, tolerance: int, progress: Any = None) -> dict[str, Any]:
    """Precision, recall and F1 at +-tolerance frames over the videos of a split, with a chance baseline."""
    from avgen import read_frames

    ids = video_ids(root, split)
    tp = detected = annotated = frames_total = 0
    errors: list[int] = []
    for vid in ids:
        video, times = root / f"{vid}_denoised.mp4", root / f"{vid}_times.txt"
        if not video.is_file() or not times.is_file():
            raise AvgenError(f"{root}: video '{vid}' of {split}.txt has no {video.name} or {times.name}")
        frames = read_frames(video, detector.fps, detector.input_size)
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
    import avgen

    if not root.is_dir():
        raise AvgenError(f"{root}: no such folder")
    detector = avgen.create("detector", detector_name, **parse_params(params))
    listing = root / f"{split}.txt"
    count = len(listing.read_text(encoding="utf-8").split()) if listing.is_file() else 0
    with _bar() as (bar, task):
        bar.update(task, description=f"detecting contacts ({detector_name})", total=count)
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
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--run", "run_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the head in this run (detector.json): `avgen generate --run` then places one sound per "
                   "detected contact. Without PATHS it learns from the run's training videos; with PATHS from those "
                   "(e.g. your own footage with sound, for a run trained on other data).")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Head file to write (default: $AVGEN_HOME/weights/timing/learned_contacts.safetensors, "
                   "which learned_contacts loads; with --run: RUN/detector.safetensors).")
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True,
              help="A Greatest-Hits-layout folder: which split file lists the training videos.")
@click.option("--labels", type=click.Choice(["auto", "audio", "annotated"]), default="auto", show_default=True,
              help="Contacts: annotated times where a video has them ({id}_times.txt), else its soundtrack's onsets "
                   "(auto); always the soundtrack (audio); only annotated times (annotated).")
@click.option("--epochs", type=click.IntRange(1, 100_000), default=300, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--detector", "detector_name", type=click.Choice(["learned_contacts", "region_contacts"]),
              default="learned_contacts", show_default=True,
              help="What to fit: learned_contacts' head, or region_contacts (its prior's threshold, and a head kept "
                   "only where it beats the prior in cross-validation; default file "
                   "$AVGEN_HOME/weights/timing/region_contacts.safetensors).")
def fit_command(paths: tuple[Path, ...], run_dir: Path | None, out: Path | None, split: str, labels: str,
                epochs: int, seed: int, detector_name: str) -> None:
    """Train learned_contacts' head (or region_contacts) on videos with sound: a folder (searched recursively),
    video files, a Greatest-Hits-layout folder (its SPLIT.txt), or with --run alone the run's training videos.
    No annotation is needed: a contact is where the video's own sound has an onset."""
    from avgen_timing.footage import check_has_sound
    from avgen_timing.learned import default_weights, fit_head, save_head, video_samples

    videos = training_videos(paths, run_dir, split)
    if labels != "annotated":
        check_has_sound(videos)
    if detector_name == "region_contacts":
        from avgen_timing.regions import fit_videos

        click.echo(fit_videos(videos, labels, run_dir, out, epochs, seed, [str(p) for p in paths]))
        return
    with _bar() as (bar, task):
        bar.update(task, description="motion features and contacts", total=len(videos))
        samples = video_samples(videos, labels, lambda: bar.advance(task))
    head = fit_head([(f, y) for f, y, _ in samples.values()], epochs=epochs, seed=seed)
    sources = sorted({source for _, _, source in samples.values()})
    info = {"videos": len(videos), "labels": sources, "epochs": epochs, "seed": seed,
            **({"run": run_dir.name} if run_dir is not None else {"root": [str(p) for p in paths]})}
    if run_dir is not None:
        path = keep_in_run(run_dir, head, out, info)
    else:
        path = save_head(head, out or default_weights(), info)
    contacts = sum(int(y.sum()) for _, y, _ in samples.values())
    click.echo(f"{path}: head trained on {len(videos)} videos ({contacts} contacts from {' and '.join(sources)} times)")


RUN_DETECTOR = "detector.json"  # in a run or model folder: the contact detector `avgen generate` uses
RUN_HEAD = "detector.safetensors"


def training_videos(paths: tuple[Path, ...], run_dir: Path | None, split: str) -> list[Path]:
    """The videos ``timing fit`` learns from (one line when there are none)."""
    from avgen_timing.footage import find_videos

    if run_dir is not None and not paths:
        return run_training_videos(run_dir)
    if run_dir is not None and not (run_dir / "recipe.toml").is_file():
        raise AvgenError(f"{run_dir}: not a run directory (no recipe.toml); give the folder `avgen run` printed")
    if not paths:
        raise AvgenError("give a folder of videos with sound, video files, or --run RUN_DIR")
    if len(paths) == 1 and paths[0].is_dir() and (paths[0] / f"{split}.txt").is_file():  # Greatest Hits layout
        root = paths[0]
        videos = [root / f"{vid}_denoised.mp4" for vid in video_ids(root, split)]
        missing = [v for v in videos if not v.is_file()]
        if missing:
            raise AvgenError(f"{missing[0]}: listed in {split}.txt but missing")
        if not videos:
            raise AvgenError(f"{root / f'{split}.txt'}: lists no video")
        return videos
    return find_videos(paths)


def run_training_videos(run_dir: Path) -> list[Path]:
    """The distinct source videos of a run's training clips."""
    import avgen

    if not (run_dir / "recipe.toml").is_file():
        raise AvgenError(f"{run_dir}: not a run directory (no recipe.toml); give the folder `avgen run` printed")
    recipe = avgen.validate_recipe(avgen.read_recipe(run_dir), run_dir / "recipe.toml")
    dataset = avgen.build_dataset(recipe)
    dataset.prepare()
    videos = list(dict.fromkeys(c.video for c in dataset.clips("train") if c.video is not None))
    if not videos:
        raise AvgenError(f"{run_dir}: its training clips have no video files to learn contacts from")
    return [Path(v) for v in videos]


def keep_in_run(run_dir: Path, head: Any, out: Path | None, info: dict[str, Any]) -> Path:
    """Write the head into the run (or ``out``) and the run's detector.json naming it."""
    from avgen import write_json

    from avgen_timing.learned import save_head

    path = save_head(head, out or run_dir / RUN_HEAD, info)
    weights = str(path.relative_to(run_dir)) if path.resolve().is_relative_to(run_dir.resolve()) else str(path.resolve())
    write_json(run_dir / RUN_DETECTOR, {"detector": "learned_contacts", "params": {"weights": weights},
                                        "trained_on": info})
    return path


@timing_group.command("sync")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--detector", "detector_name", default="motion_contacts", show_default=True,
              help="The detector whose contacts and contact strength stand for the picture.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="A detector parameter; repeatable.")
@click.option("--reference", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Score each video's soundtrack onsets against those of the video of the same name in this folder "
                   "(e.g. avgen's clip.avgen.mp4 against the real clip.mp4) instead of the detector's contacts.")
@click.option("--leave-one-out", is_flag=True,
              help="learned_contacts or region_contacts: score each video with the detector fitted on the others' "
                   "soundtracks.")
@click.option("--tolerance", type=click.FloatRange(0.001, 1.0), default=0.1, show_default=True,
              help="A contact within this many seconds of an onset is correct.")
@click.option("--max-offset", type=click.FloatRange(0.01, 5.0), default=0.5, show_default=True,
              help="Largest audio-video offset searched (s).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the JSON to this file.")
@click.option("--plot", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Draw each video into this folder as <video name>.sync.png: the picture's contact strength and "
                   "contacts above the soundtrack's onsets, matched ones green, the others red.")
def sync_command(paths: tuple[Path, ...], detector_name: str, params: tuple[str, ...], reference: Path | None,
                 leave_one_out: bool, tolerance: float, max_offset: float, as_json: bool, out: Path | None,
                 plot: Path | None) -> None:
    """Score videos against their own soundtrack: the detector's contacts against the sound's onsets (precision,
    recall, F1 at +-TOLERANCE s) and each video's audio-video offset. Works on real footage and on avgen's outputs."""
    import avgen
    from avgen_timing.scoring import score_folder

    if reference is not None and not reference.is_dir():
        raise AvgenError(f"--reference {reference}: no such folder")
    if out is not None:
        avgen.check_outputs([(out, "-o")], list(paths), "give another -o")
    if plot is not None:
        if plot.exists() and not plot.is_dir():
            raise AvgenError(f"--plot {plot}: exists and is not a folder")
        avgen.check_outputs([(plot, "--plot")], list(paths), "give another --plot folder")
        avgen.check_writable(plot, "--plot", "give another --plot folder")
    settings = parse_params(params)
    if leave_one_out:
        if detector_name == "region_contacts":
            from avgen_timing.regions import leave_one_out_factory as region_factory

            factory = region_factory(settings)
        elif detector_name != "learned_contacts":
            raise AvgenError("--leave-one-out fits a detector on the other videos: add --detector learned_contacts "
                             "or --detector region_contacts")
        else:
            factory = leave_one_out_factory(settings)
    else:
        detector = avgen.create("detector", detector_name, **settings)
        factory = lambda videos, video: detector  # noqa: E731
    if plot is not None:
        plot.mkdir(parents=True, exist_ok=True)
    with _bar() as (bar, task):
        bar.update(task, description=f"scoring ({detector_name})")
        result = score_folder(list(paths), factory, tolerance, max_offset, reference,
                              progress=lambda: bar.advance(task), figures=plot)
    result = {"detector": detector_name, "leave_one_out": leave_one_out, "tolerance_s": tolerance, **result}
    if out is not None:
        avgen.write_json(out, result)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(sync_table(result))


def leave_one_out_factory(settings: dict[str, str]) -> Any:
    """A factory giving, for each video, learned_contacts with a head fitted on the other videos' soundtracks."""
    from avgen_timing.learned import LearnedContacts, LearnedContactsParams, fit_head, video_samples

    samples: dict[Path, Any] = {}

    def factory(videos: list[Path], video: Path) -> Any:
        if len(videos) < 2:
            raise AvgenError("--leave-one-out needs at least two videos")
        if not samples:
            samples.update(video_samples(videos, "audio"))
        detector = LearnedContacts(LearnedContactsParams(weights="none", **settings))
        detector.head.load_state_dict(fit_head([samples[v][:2] for v in videos if v != video]).state_dict())
        return detector

    return factory


def sync_table(result: dict[str, Any]) -> str:
    """The per-video rows and the totals as plain text."""
    lines = [f"{'video':40} {'onsets':>6} {'found':>6} {'P':>6} {'R':>6} {'F1':>6} {'offset ms':>9}"]
    for r in result["videos"]:
        offset = f"{r['offset_ms']:+.0f}" if r["offset_ms"] is not None else "?" if r.get("offset_stands_out") is False else "-"
        lines.append(f"{Path(r['video']).name[:40]:40} {r['onsets']:6d} {r['found']:6d} {r['precision']:6.3f} "
                     f"{r['recall']:6.3f} {r['f1']:6.3f} {offset:>9}")
    s = result["summary"]
    lines.append(f"{s['videos']} videos: precision {s['precision']:.3f}, recall {s['recall']:.3f}, F1 {s['f1']:.3f} at "
                 f"+-{result['tolerance_s'] * 1000:g} ms ("
                 + (f"soundtrack onsets against the reference's; offsets by {result['detector']}"
                    if result["videos"] and result["videos"][0]["reference"] else result["detector"])
                 + (", leave one video out" if result["leave_one_out"] else "") + ")"
                 + (f"; |offset| {s['offset_ms_mean_abs']:.0f} ms on average, {s['within_one_frame']:.0%} within one "
                    f"frame ({s['frame_ms']:.1f} ms)" if s["offset_ms_mean_abs"] is not None else "")
                 + (f"; offset undetermined (?) for {s['offsets_undetermined']}" if s.get("offsets_undetermined") else ""))
    if s["offset_ms_mean_abs"] is not None or s.get("offsets_undetermined"):
        lines.append("offset: the lag within the search window where the detector's contact strength best matches the "
                     "onsets of the sound, given where that match beats the same sound moved out of line with the "
                     "picture (?: it does not); only as good as the detector (docs/timing_detectors.md)")
    return "\n".join(lines)


def _bar() -> Any:
    """A transient progress bar on stderr, where it is a terminal: ``with _bar() as (bar, task)``."""
    import contextlib

    from avgen import make_console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    @contextlib.contextmanager
    def bar() -> Any:
        console = make_console(stderr=True)  # not a terminal: no bar (a transient one would leave a blank line)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True, disable=not console.is_terminal) as progress:
            yield progress, progress.add_task("", total=None)

    return bar()
