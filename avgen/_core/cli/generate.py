"""`avgen generate`: the sound of videos by a trained run or an exported model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from avgen._core.cli import THREADS_OPTION, cli, console, err_console
from avgen._core.errors import AvgenError


VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg")


def _video_files(items: tuple[Path, ...]) -> list[Path]:
    """The videos named, a folder standing for the videos directly in it (not avgen's own outputs)."""
    videos: list[Path] = []
    for item in items:
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES
                           and not p.name.endswith(".avgen.mp4"))
            if not found:
                raise AvgenError(f"{item}: folder holds no videos ({', '.join(VIDEO_SUFFIXES)})")
            videos.extend(found)
        elif item.is_file():
            videos.append(item)
        else:
            raise AvgenError(f"{item}: video file not found")
    return videos


@cli.command("generate")
@click.argument("videos", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--run", "run_dir", type=click.Path(path_type=Path),
              help="A run directory with a trained model (runs/<name>).")
@click.option("--model", "model_dir", type=click.Path(path_type=Path),
              help="A model folder written by `avgen export` (instead of --run; needs nothing else).")
@click.option("-o", "--out", type=click.Path(path_type=Path), default=Path("."), show_default=True,
              help="Where to write. A folder (an existing one, or a new one named without a suffix; missing parent "
                   "folders are made) gets <stem>.avgen.mp4, .avgen.wav and .avgen.json per video; with one video, a "
                   "path ending in .mp4, .mov or .mkv gets that video with the generated sound (and the .wav and .json "
                   "beside it), a path ending in .wav the sound alone. An output is never written over an input.")
@click.option("--raw/--exemplar", "raw", default=True, show_default=True,
              help="Raw sound (decode of s') or exemplar sound (nearest training clip: the run's training data, "
                   "or the sounds exported with --model).")
@click.option("--library", type=click.Path(path_type=Path),
              help="Exemplar sounds from your own folder of wav/flac/ogg/mp3 files (optional library.csv: "
                   "file,label,licence,source); indexed once and cached; implies --exemplar.")
@click.option("--material", metavar="CLASS",
              help="Force the sound class (e.g. wood) of a generator with classes, to re-voice the video.")
@click.option("--keep-audio", is_flag=True, help="Keep the video's original audio as a second track.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Change a generation setting of the model's recipe (generator.*, representation.*, eval.*, "
                   "index.*), e.g. --set generator.steps=4, or --set index.name=faiss for another exemplar search "
                   "(avgen list index); the trained weights must still fit.")
@click.option("--onsets-out", type=click.Path(path_type=Path),
              help="Also write the detected contacts (time, confidence, material, probability) to this JSON file (docs/timing.md).")
@click.option("--onsets", "onsets_in", type=click.Path(path_type=Path),
              help="Place one sound at each onset of this JSON file (edited --onsets-out output) instead of following the video.")
@click.option("--detector", "detector_name", default=None,
              help="The detector component that finds contacts for events and --onsets-out (avgen list detector); "
                   "default: the model's own (`avgen timing fit --run`), else the one the events plugin offers "
                   "(the timing plugin's needs no training).")
@click.option("--mode", type=click.Choice(["auto", "events", "windows"]), default="auto", show_default=True,
              help="events: one sound at each detected contact, silence elsewhere (a plugin makes it: the timing "
                   "plugin); windows: clip-length windows every half clip, each sounding; auto: events when the model "
                   "keeps a contact detector or --detector is given (and a plugin makes events), else windows.")
@THREADS_OPTION
def generate_cmd(videos: tuple[Path, ...], run_dir: Path | None, model_dir: Path | None, out: Path, raw: bool,
                 library: Path | None, material: str | None, keep_audio: bool, device: str,
                 overrides: tuple[str, ...], onsets_out: Path | None, onsets_in: Path | None,
                 detector_name: str | None, mode: str, threads: int) -> None:
    """Generate the sound of each VIDEO (or of every video in a folder) with a trained run or an exported model;
    writes <stem>.avgen.wav, <stem>.avgen.mp4 and <stem>.avgen.json (predicted class; per window, the exemplar's
    source and similarity) into the -o folder, or for one video the -o file: OUT.mp4/.mov/.mkv (and OUT.wav,
    OUT.json) or OUT.wav alone. Long videos stream: memory does not grow with their length."""
    import time

    from avgen._core.distributed import resolve_device
    from avgen._core.videosound import return_freed_memory
    from avgen._core.model import load_folder, load_run
    from avgen._core.threads import apply_threads, plan_threads

    return_freed_memory()  # long videos: peak memory flat in their length

    if (run_dir is None) == (model_dir is None):
        raise AvgenError("give the model with --run RUN_DIR or --model MODEL_DIR (exactly one)")
    files = _video_files(videos)
    if (onsets_out or onsets_in) and len(files) > 1:
        raise AvgenError(f"--onsets/--onsets-out take one video, got {len(files)}")
    if onsets_out and onsets_in:
        raise AvgenError("give --onsets-out (detect) or --onsets (place), not both")
    targets = _generate_targets(files, out, keep_audio, onsets_out, onsets_in)  # before the model loads
    dev = resolve_device(device)
    apply_threads(plan_threads(threads))
    if onsets_in and mode == "events":
        raise AvgenError("--onsets places the sounds where the file says; --mode events detects them: give one")
    asked = "--onsets" if onsets_in else "--onsets-out" if onsets_out else "--mode events" if mode == "events" else \
        "--detector" if detector_name is not None and mode == "auto" else None
    if asked is not None:  # events asked for: a plugin must make them (--mode auto alone slides windows without one)
        from avgen._core.events import require_events

        require_events(asked)
    if detector_name is not None:  # an unknown detector fails before the model loads
        from avgen._core.plugins import get_component

        get_component("detector", detector_name)
    started = time.perf_counter()
    model = load_run(run_dir, dev, overrides) if run_dir is not None else load_folder(model_dir, dev, overrides)
    if len(files) == 1:  # one video that is not one: its one line, before any other (a folder's go in its table)
        from avgen._core.media import probe

        probe(files[0])
    err_console.print(f"loaded {model.name} from {run_dir or model_dir} in {time.perf_counter() - started:.1f} s")
    forced = model.material(material) if material is not None else None
    detector = _detector(model, detector_name, mode, bool(onsets_out), bool(onsets_in))
    bank = None if raw and library is None else model.bank(library, err_console)
    made = _output_folder(out) if _writes_a_folder(out) else None
    rows = _generate_videos(files, targets, model, bank, forced, (onsets_in, onsets_out, detector),
                            keep_audio, str(Path(run_dir or model_dir).resolve()))
    if made is not None and not any(made.iterdir()):  # every video failed: no empty folder left behind
        made.rmdir()
    if len(files) > 1:
        err_console.print(_generate_table(rows))
    failed = [row for row in rows if "error" in row]
    if failed:
        if len(files) == 1:
            raise AvgenError(failed[0]["error"])
        raise click.exceptions.Exit(1)


VIDEO_OUTPUTS = (".mp4", ".mov", ".mkv")  # `generate -o` paths written as one video file (media.CONTAINERS)
SOUND_OUTPUT = ".wav"  # ... written as the sound alone


def _writes_a_folder(out: Path) -> bool:
    """``generate -o``: an existing folder, or a new one named without a suffix; anything else is a file path
    (``out.txt`` is refused as a file avgen does not write, rather than made a folder)."""
    return out.is_dir() or not out.suffix


def _generate_targets(files: list[Path], out: Path, keep_audio: bool, onsets_out: Path | None,
                      onsets_in: Path | None) -> dict[Path, tuple[Path | None, Path, Path | None]]:
    """Each video's (video file or None, wav, json or None) from ``-o``; refuses, before the model loads, a media
    suffix avgen does not write, a file path for several videos, a folder that cannot be written, and any output
    that is one of the inputs (the videos, --onsets) or another output."""
    from avgen._core.outputs import check_outputs, check_writable

    suffix = out.suffix.lower()
    if _writes_a_folder(out):
        check_writable(out, "the output folder", "give a writable folder with -o")
        targets = {video: (out / f"{video.stem}.avgen.mp4", out / f"{video.stem}.avgen.wav",
                           out / f"{video.stem}.avgen.json") for video in files}
    else:
        if suffix not in VIDEO_OUTPUTS + (SOUND_OUTPUT,):
            raise AvgenError(f"-o {out}: avgen generate writes {', '.join(VIDEO_OUTPUTS)} files (the video with the "
                             f"generated sound), {SOUND_OUTPUT} files (the sound alone) or a folder (a new folder's "
                             "name has no suffix; make one whose name has a dot first)")
        if len(files) > 1:
            raise AvgenError(f"-o {out}: a {suffix} path takes one video; give a folder for {len(files)} videos")
        if suffix == SOUND_OUTPUT and keep_audio:
            raise AvgenError(f"--keep-audio keeps the video's audio in a video file; -o {out} writes the sound alone")
        check_writable(out.parent, "the output folder", "give a path in a writable folder with -o")
        targets = {files[0]: (None, out, None) if suffix == SOUND_OUTPUT else
                   (out, out.with_suffix(SOUND_OUTPUT), out.with_suffix(".json"))}
    of = (lambda video: f" of {video}") if len(files) > 1 else (lambda video: "")
    outputs = [(path, f"the output {kind}{of(video)}") for video, paths in targets.items()
               for path, kind in zip(paths, ("video", "sound", "summary")) if path is not None]
    if onsets_out is not None:
        outputs.append((onsets_out, "--onsets-out"))
    check_outputs(outputs, [*files, *([onsets_in] if onsets_in is not None else [])],
                  "give another -o" + (" or --onsets-out" if onsets_out is not None else "")
                  + (", or rename one of the videos" if len(files) > 1 else ""))
    return targets


def _output_folder(out: Path) -> Path | None:
    """Make the output folder; returns it when it was made here (removed again if nothing is written into it)."""
    from avgen._core.atomic import folder_error

    if out.is_dir():
        return None
    try:
        out.mkdir(parents=True)
    except OSError as exc:
        raise folder_error(out, "the output folder", exc, "give a writable folder with -o") from exc
    return out


def _generate_videos(files: list[Path], targets: dict[Path, tuple[Path | None, Path, Path | None]], model: Any,
                     bank: Any, forced: int | None, onsets: tuple, keep_audio: bool,
                     model_name: str) -> list[dict[str, Any]]:
    """Generate each video under one progress bar (seconds of video done); a row per video for the summary.

    In a batch a video that fails (unreadable, no picture) is reported in its row and the others go on."""
    import time

    from avgen._core.atomic import write_json
    from avgen._core.console import progress_bar
    from avgen._core.videosound import write_video_sound
    from avgen._core.mux import mux_audio
    from avgen._core.sound import write_wav
    onsets_in, onsets_out, detector = onsets
    rows: list[dict[str, Any]] = []
    with progress_bar(err_console) as progress:
        task = progress.add_task("generate", total=None)
        jobs: list[tuple[Path, Any]] = []
        for video in files:  # probe every video first: the bar counts windows of all of them
            try:
                job = None if (onsets_in or onsets_out or detector) else model.stream(video, bank=bank, material=forced)
                jobs.append((video, job))
            except AvgenError as exc:
                rows.append({"video": str(video), "error": str(exc)})
                _batch_error(progress.console, len(files), video, exc)
        progress.update(task, total=sum(len(job.starts) if job else 1 for _, job in jobs))
        for video, job in jobs:
            t0 = time.perf_counter()
            mp4, wav_path, summary_path = targets[video]
            try:
                if job is None:
                    wave, summary = _generate_timed(video, onsets_in, onsets_out, detector, bank, model,
                                                    progress.console, forced)
                    wav = write_wav(wav_path, wave, summary["sample_rate"])
                    progress.advance(task)
                else:
                    wav = write_video_sound(job, wav_path, progress=(progress, task))
                    summary = job.summary
                if mp4 is not None:
                    mux_audio(video, wav, mp4, keep_original_audio=keep_audio)
                if summary_path is not None:
                    write_json(summary_path, {"model": model_name, **summary})
            except AvgenError as exc:
                rows.append({"video": str(video), "error": str(exc)})
                _batch_error(progress.console, len(files), video, exc)
                continue
            seconds = time.perf_counter() - t0
            rtf = seconds / max(summary["seconds"], 1e-9)
            classes = ", ".join(f"{k} {v:.2f}" for k, v in summary.get("classes", {}).items())
            output = mp4 if mp4 is not None else wav
            progress.console.print(f"{video} -> {output} ({summary['seconds']:.1f} s of video in {seconds:.1f} s, "
                                   f"real-time factor {rtf:.2f})" + (f"; classes: {classes}" if classes else ""),
                                   markup=False)
            rows.append({"video": str(video), "output": str(output), "seconds": summary["seconds"], "took": seconds,
                         "rtf": rtf, "predicted": _class_cell(summary)})
            console.print(str(output), markup=False, highlight=False, soft_wrap=True)  # a path for scripts: never wrapped
    return rows


def _batch_error(out: Any, count: int, video: Path, exc: AvgenError) -> None:
    """In a batch, one line for a video that failed (the others go on); a single video's error ends the command."""
    if count > 1:
        out.print(f"[red]error:[/red] {escape(str(video))}: {escape(str(exc))}", highlight=False, soft_wrap=True)


def _class_cell(summary: dict[str, Any]) -> str:
    """What the batch table says the video sounds like: the class (windows), or its contacts' (events)."""
    if "contacts" not in summary:
        return str(summary.get("material") or summary.get("predicted") or "")
    from collections import Counter

    counts = Counter(str(c.get("material") or "?") for c in summary["contacts"] if isinstance(c, dict))
    total = sum(counts.values())
    return "no contact" if not total else f"{total} contact{'s' * (total > 1)}: " + ", ".join(
        f"{name} {count}" for name, count in counts.most_common(3)) + (", ..." if len(counts) > 3 else "")


def _generate_table(rows: list[dict[str, Any]]) -> Any:
    """The batch summary: one row per video (its output, or why it failed)."""
    from rich.table import Table

    table = Table(title=f"avgen generate: {sum('error' not in r for r in rows)} of {len(rows)} videos")
    for column in ("video", "seconds", "took (s)", "real-time factor", "class", "output or error"):
        table.add_column(column, overflow="fold")
    for row in rows:
        if "error" in row:
            table.add_row(row["video"], "", "", "", "", f"[red]{escape(row['error'])}[/red]")
        else:
            table.add_row(row["video"], f"{row['seconds']:.1f}", f"{row['took']:.1f}", f"{row['rtf']:.2f}",
                          str(row["predicted"] or ""), row["output"])
    total = sum(r.get("seconds", 0.0) for r in rows)
    took = sum(r.get("took", 0.0) for r in rows)
    if total > 0:
        table.caption = f"{total:.1f} s of video in {took:.1f} s (real-time factor {took / total:.2f})"
    return table


def _detector(model: Any, name: str | None, mode: str, onsets_out: bool, onsets_in: bool) -> tuple[str | None, Any] | None:
    """(name, detector) that finds the contacts (events mode, --onsets-out), or None for sliding windows (also
    for --mode auto when no plugin makes sound by events). The detector the model keeps has no name here:
    ``SoundModel.detector_for`` decides per video whether it is used, and names it."""
    from avgen._core.events import events_available, fallback_detector
    from avgen._core.plugins import create

    if onsets_in or (mode == "windows" and not onsets_out) or not events_available():
        return None
    if name is not None:
        return name, create("detector", name)
    if model.detector is not None:
        return None, model.detector
    if mode == "events" or onsets_out:
        return fallback_detector("the model", "give --detector NAME (avgen list detector)")
    return None


def _generate_timed(video: Path, onsets_in: Path | None, onsets_out: Path | None, detector: tuple[str | None, Any] | None, bank: Any,
                    model: Any, out_console: Any, forced: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Events: one sound per detected contact (--onsets-out also writes them); --onsets: one per onset of the file.
    The plugin that answers ``sound_of_events`` makes it (avgen/_core/events.py)."""
    from avgen._core.events import sound_of_events

    name, found_by = detector if detector is not None else (None, None)
    info: dict[str, Any] = {}
    if found_by is not None and found_by is model.detector:  # the kept one, where the video is like its training videos
        found_by, name, info = model.detector_for(video)
        if found_by is not model.detector:
            out_console.print(f"note: {video}: contacts by {name}", markup=False, highlight=False, soft_wrap=True)
    wave, summary = sound_of_events(model, video, detector=found_by, detector_name=name, onsets=onsets_in,
                                    onsets_out=onsets_out, bank=bank, material=forced, console=out_console)
    return wave, {**summary, **info}
