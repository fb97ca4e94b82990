"""The ``avgen`` command: list and show components, run recipes, manage the cache.

Plugins add commands through the ``register_commands(cli)`` hook; they are loaded only
when a command that is not built in is asked for. ``avgen --help``, ``list`` and ``show``
read the component index (``avgen/index.py``), so they import no plugin and no torch.
"""

from __future__ import annotations

import json
import signal
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import click
from rich.markup import escape
from rich.table import Table

from avgen import __version__
from avgen.console import make_console
from avgen.errors import AvgenError
from avgen.registry import KINDS

console = make_console()
err_console = make_console(stderr=True)

_BUILTIN = {"list", "show", "run", "cache", "generate"}


class AvgenGroup(click.Group):
    """A click group that pulls plugin commands in on first need; --help lists them from the component index."""

    _plugins_loaded = False
    _listing = False  # formatting --help: a plugin command's help text is enough
    _stand_ins: dict[str, click.Command] | None = None

    def _load_plugin_commands(self) -> None:
        if not AvgenGroup._plugins_loaded:
            AvgenGroup._plugins_loaded = True
            from avgen.plugins import register_commands

            register_commands(self)

    def _indexed_commands(self) -> dict[str, click.Command]:
        """Stand-ins (name and help only) for the plugin commands, from the component index."""
        if AvgenGroup._stand_ins is None:
            from avgen.index import component_index

            AvgenGroup._stand_ins = {
                c.name: click.Command(c.name, help=c.help, short_help=c.short_help, hidden=c.hidden,
                                      deprecated=c.deprecated)
                for c in component_index().commands if c.name not in _BUILTIN}
        return AvgenGroup._stand_ins

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in _BUILTIN:
            if AvgenGroup._listing and not AvgenGroup._plugins_loaded and name in self._indexed_commands():
                return self._indexed_commands()[name]
            self._load_plugin_commands()
        return super().get_command(ctx, name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        if AvgenGroup._plugins_loaded:
            return super().list_commands(ctx)
        return sorted(set(super().list_commands(ctx)) | set(self._indexed_commands()))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of --help, without importing the plugins that add commands."""
        AvgenGroup._listing = True
        try:
            super().format_commands(ctx, formatter)
        finally:
            AvgenGroup._listing = False

    def invoke(self, ctx: click.Context) -> Any:
        """Every command's AvgenError / pydantic error becomes one line and exit 2 (also under CliRunner)."""
        with _one_line_errors(ctx):
            return super().invoke(ctx)


@click.group(cls=AvgenGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="avgen")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """avgen: generate the sound a video shows (POCAN, Owens et al.) with pluggable components."""
    ctx.ensure_object(dict)["debug"] = debug


# ---------------------------------------------------------------- list / show


def _kind(text: str) -> str | None:
    """'encoder' or 'encoders' -> 'encoder'; anything else -> None."""
    text = text.lower()
    for kind in KINDS:
        if text in (kind, kind + "s", kind + "es"):
            return kind
    return None


@cli.command("list")
@click.argument("kind", required=False)
@click.argument("pattern", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def list_cmd(kind: str | None, pattern: str | None, as_json: bool) -> None:
    """List registered components: KIND (encoder, representation, generator, loss,
    dataset, metric) and a glob PATTERN such as '*resnet*'."""
    from avgen.index import component_index

    if kind is not None and _kind(kind) is None:
        if pattern is not None:
            raise AvgenError(f"unknown component kind '{kind}'; kinds are {', '.join(KINDS)}")
        kind, pattern = None, kind  # `avgen list '*resnet*'`
    index = component_index()
    components = index.all(_kind(kind) if kind else None, pattern)
    if not components and kind is None and pattern is not None:  # e.g. a misspelled kind: say so, not an empty table
        raise AvgenError(f"no component kind or name matches '{pattern}'; kinds are {', '.join(KINDS)} "
                         "(`avgen list` shows every component)")
    broken = index.broken
    if as_json:
        click.echo(json.dumps({
            "components": [{"kind": c.kind, "name": c.name, "plugin": c.plugin, "summary": c.summary,
                            "version": c.version} for c in components],
            "broken_plugins": [{"name": p.name, "module": p.module, "error": p.error} for p in broken],
        }, indent=2))
        return
    table = Table(title="avgen components", show_lines=False)
    for col in ("kind", "name", "plugin", "summary"):
        table.add_column(col, overflow="fold")
    for c in components:
        table.add_row(c.kind, c.name, c.plugin, c.summary)
    console.print(table)
    if not components:
        console.print("no components match" + (f" '{pattern}'" if pattern else ""))
    for p in broken:
        console.print(f"[red]broken plugin[/red] {p.name} ({p.module}, {p.distribution} {p.version}): {escape(p.error or '')}")


@cli.command("show")
@click.argument("name")
@click.option("--kind", type=click.Choice(KINDS), help="Which kind, when several kinds share NAME.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def show_cmd(name: str, kind: str | None, as_json: bool) -> None:
    """Show a component's Params (field, type, default, description) and card."""
    from avgen.index import ComponentInfo, component_index

    index = component_index()
    found = [c for c in index.find(name) if kind in (None, c.kind)]
    if kind and not found:
        from avgen.plugins import get_component

        found = [ComponentInfo.from_component(get_component(kind, name))]  # the registry's error: close names
    if not found:
        names = sorted({c.name for c in index.components})
        import difflib

        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise AvgenError(f"no component named '{name}'{hint} (see `avgen list`)")
    for c in found:
        fields = c.params
        if as_json:
            click.echo(json.dumps({"kind": c.kind, "name": c.name, "plugin": c.plugin, "summary": c.summary,
                                   "version": c.version, "card": c.card,
                                   "params": [dict(zip(("field", "type", "default", "description"), r)) for r in fields]},
                                  indent=2, default=str))
            continue
        console.print(f"[bold]{c.kind} {c.name}[/bold] (plugin {c.plugin}, version {c.version}): {c.summary}")
        table = Table("field", "type", "default", "description", title="Params")
        for row in fields:
            table.add_row(*row)
        if not fields:
            console.print("no params")
        else:
            console.print(table)
        if c.card_rows:
            card = Table("card", "value")
            for k, v in c.card_rows:
                card.add_row(k, v)
            console.print(card)


# ---------------------------------------------------------------- run

THREADS_OPTION = click.option(
    "--threads", type=click.IntRange(0, 1024), default=0, show_default=True,
    help="CPU threads for torch (0: the cores avgen may use, divided among torchrun ranks); "
         "each --workers process uses one (docs/reliability.md).")


@cli.command("run")
@click.argument("recipes", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe value, e.g. --set train.epochs=5 (repeatable).")
@click.option("--out", type=click.Path(path_type=Path), help="Folder for run directories (default: the recipe's run.out).")
@click.option("--fresh", is_flag=True, help="Start the run over instead of resuming it.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Where models run (default: the recipe's run.device).")
@click.option("--only", type=click.Choice(["prepare", "featurize", "fit", "generate", "evaluate", "report"]),
              help="Run only this stage (again).")
@click.option("--workers", type=click.IntRange(0, 64), default=0, show_default=True,
              help="DataLoader worker processes for decoding video.")
@click.option("--strict", is_flag=True,
              help="Stop at the first unreadable media file instead of skipping its clips (skipped.txt lists them).")
@THREADS_OPTION
@click.pass_context
def run_cmd(ctx: click.Context, recipes: tuple[Path, ...], overrides: tuple[str, ...], out: Path | None, fresh: bool,
            device: str | None, only: str | None, workers: int, strict: bool, threads: int) -> None:
    """Run one or more RECIPES (TOML files, or folders of them) through every stage.

    A re-run of the same recipe resumes after the last finished stage; several recipes
    share the feature cache and end with a comparison table.
    """
    from avgen.errors import resumable

    with resumable():  # its write errors say that the same command resumes
        _run_recipes(recipes, overrides, out, fresh, device, only, workers, strict, threads)


class UserError(click.ClickException):
    """A user's mistake as click sees it: ``error: <one line>`` on stderr and exit code 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        err_console.print(f"[red]error:[/red] {escape(self.message)}", highlight=False, soft_wrap=True)


@contextmanager
def _one_line_errors(ctx: click.Context) -> Iterator[None]:
    """AvgenError and pydantic errors become a one-line UserError (also under click's CliRunner);
    ``avgen --debug`` keeps the original exception and its traceback."""
    from pydantic import ValidationError

    from avgen.registry import format_validation_error

    try:
        yield
    except (AvgenError, ValidationError) as exc:
        if (ctx.find_root().obj or {}).get("debug"):
            raise
        text = format_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)
        raise UserError(_single_line(text)) from exc


def _single_line(text: str) -> str:
    """The text with every line break (\\n, \\r, U+2028, ...) written as an escape, so it stays one line."""
    return "".join(repr(ch)[1:-1] if ch.splitlines() != [ch] else ch for ch in text)  # a break splits itself


def _run_recipes(recipes: tuple[Path, ...], overrides: tuple[str, ...], out: Path | None, fresh: bool,
                 device: str | None, only: str | None, workers: int, strict: bool, threads: int = 0) -> None:
    """Validate every recipe and build its data and representation, then run them one by one."""
    from avgen.recipe import load_recipes
    from avgen.distributed import leave_process_group, resolve_device
    from avgen.runner import Run
    from avgen.threads import apply_threads, plan_threads

    plan = apply_threads(plan_threads(threads, workers))

    import time

    started = time.perf_counter()
    paths = _expand_recipes(recipes)
    loaded = [r for p in paths for r in load_recipes(p, overrides)]  # validate all before running any
    runs, run_dirs = [], []
    for recipe in loaded:
        if out is not None:
            recipe.run.out = out
        dev = resolve_device(device or recipe.run.device)
        run_dir = recipe.run.out / recipe.run.group / recipe.run.name
        if run_dir in run_dirs:
            raise AvgenError(f"two recipes write the same run directory {run_dir}; give each a different run.name")
        run_dirs.append(run_dir)
        runs.append(Run(recipe, run_dir, dev, console=err_console, num_workers=workers, strict=strict, threads=plan))
    for run in runs:  # errors of the data and representation settings come before any run directory exists
        run.preflight()
    for run in runs:
        err_console.print(f"[bold]avgen run[/bold] {escape(str(run.recipe.source))} -> {escape(str(run.run_dir))} "
                          f"on {run.device}")
        run.execute(only=only, fresh=fresh)
        if run.rank == 0:
            console.print(f"run directory: {run.run_dir}", markup=False)
    leave_process_group()
    if runs and runs[0].rank != 0:  # under torchrun only rank 0 compares and reports
        return
    if len(run_dirs) > 1:
        _compare(click.get_current_context(), run_dirs)
    err_console.print(f"total time: {time.perf_counter() - started:.1f} s")


def _compare(ctx: click.Context, run_dirs: list[Path]) -> None:
    """The comparison table of several runs (``avgen compare`` when a plugin provides it)."""
    command = ctx.find_root().command.get_command(ctx, "compare")
    if command is None:  # the table is the eval plugin's (avgen compare); the core keeps no second copy
        err_console.print("no `compare` command is loaded (it comes with the eval plugin); runs: "
                          + ", ".join(str(d) for d in run_dirs), markup=False, soft_wrap=True)
        return
    parents = {d.parent for d in run_dirs}
    where = (parents.pop() if len(parents) == 1 else Path(".")) / "compare.html"
    ctx.invoke(command, run_dirs=tuple(run_dirs), output=where, as_json=False)


def _expand_recipes(items: tuple[Path, ...]) -> list[Path]:
    paths: list[Path] = []
    for item in items:
        if item.is_dir():
            found = sorted(item.glob("*.toml"))
            if not found:
                raise AvgenError(f"{item}: folder holds no .toml recipes")
            paths.extend(found)
        else:
            paths.append(item)
    return paths


# ---------------------------------------------------------------- generate


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
              help="Where to write. A folder (made if missing) gets <stem>.avgen.mp4, .avgen.wav and .avgen.json per "
                   "video; with one video, a path ending in .mp4, .mov or .mkv gets that video with the generated sound "
                   "(and the .wav and .json beside it), a path ending in .wav the sound alone. An output is never "
                   "written over an input.")
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
              help="Change a generation setting of the model's recipe (generator.*, representation.*, eval.*), "
                   "e.g. --set generator.steps=4; the trained weights must still fit.")
@click.option("--onsets-out", type=click.Path(path_type=Path),
              help="Also write the detected contacts (time, confidence, material, probability) to this JSON file (docs/timing.md).")
@click.option("--onsets", "onsets_in", type=click.Path(path_type=Path),
              help="Place one sound at each onset of this JSON file (edited --onsets-out output) instead of following the video.")
@click.option("--detector", "detector_name", default="motion_contacts", show_default=True,
              help="The detector component --onsets-out uses (avgen list detector).")
@THREADS_OPTION
def generate_cmd(videos: tuple[Path, ...], run_dir: Path | None, model_dir: Path | None, out: Path, raw: bool,
                 library: Path | None, material: str | None, keep_audio: bool, device: str,
                 overrides: tuple[str, ...], onsets_out: Path | None, onsets_in: Path | None,
                 detector_name: str, threads: int) -> None:
    """Generate the sound of each VIDEO (or of every video in a folder) with a trained run or an exported model;
    writes <stem>.avgen.wav, <stem>.avgen.mp4 and <stem>.avgen.json (predicted class; per window, the exemplar's
    source and similarity) into the -o folder, or for one video the -o file: OUT.mp4/.mov/.mkv (and OUT.wav,
    OUT.json) or OUT.wav alone. Long videos stream: memory does not grow with their length."""
    import time

    from avgen.generate import (load_model_folder, load_trained, material_class, return_freed_memory, select_bank,
                                training_split)
    from avgen.distributed import resolve_device
    from avgen.threads import apply_threads, plan_threads

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
    if onsets_out:  # an unknown detector fails before the model loads
        from avgen.plugins import get_component

        get_component("detector", detector_name)
    started = time.perf_counter()
    if run_dir is not None:
        recipe, encoder, representation, model, meta = load_trained(run_dir, dev, overrides)
        model_bank = None
    else:
        recipe, encoder, representation, model, meta, model_bank = load_model_folder(model_dir, dev, overrides)
    err_console.print(f"loaded {recipe.generator.name} from {run_dir or model_dir} in {time.perf_counter() - started:.1f} s")
    forced = material_class(material, meta) if material is not None else None
    train = None
    if onsets_in and not raw:  # one exemplar per onset, of the onset's material: the training split itself
        if run_dir is None or library is not None:
            raise AvgenError("--onsets with --exemplar takes the exemplars from the run's training clips: give --run "
                             "(not --model or --library), or use --raw")
        train = training_split(recipe, run_dir, dev, encoder, representation, err_console)
    bank = None if onsets_in else select_bank(
        exemplar=not raw, library=library, run_dir=run_dir, model_bank=model_bank, recipe=recipe, encoder=encoder,
        representation=representation, meta=meta, device=dev, console=err_console)
    trained = (recipe, encoder, representation, model, meta, dev)
    made = _output_folder(out) if _writes_a_folder(out) else None
    rows = _generate_videos(files, targets, trained, bank, forced, (onsets_in, onsets_out, detector_name, train),
                            keep_audio, str(run_dir or model_dir))
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
MEDIA_SUFFIXES = set(VIDEO_SUFFIXES) | {".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".opus"}  # not folder names


def _writes_a_folder(out: Path) -> bool:
    """``generate -o``: a folder unless it ends in a media suffix (and is not an existing folder)."""
    return out.is_dir() or out.suffix.lower() not in MEDIA_SUFFIXES


def _generate_targets(files: list[Path], out: Path, keep_audio: bool, onsets_out: Path | None,
                      onsets_in: Path | None) -> dict[Path, tuple[Path | None, Path, Path | None]]:
    """Each video's (video file or None, wav, json or None) from ``-o``; refuses, before the model loads, a media
    suffix avgen does not write, a file path for several videos, a folder that cannot be written, and any output
    that is one of the inputs (the videos, --onsets) or another output."""
    from avgen.outputs import check_outputs, check_writable

    suffix = out.suffix.lower()
    if _writes_a_folder(out):
        check_writable(out, "the output folder", "give a writable folder with -o")
        targets = {video: (out / f"{video.stem}.avgen.mp4", out / f"{video.stem}.avgen.wav",
                           out / f"{video.stem}.avgen.json") for video in files}
    else:
        if suffix not in VIDEO_OUTPUTS + (SOUND_OUTPUT,):
            raise AvgenError(f"-o {out}: avgen generate writes {', '.join(VIDEO_OUTPUTS)} files (the video with the "
                             f"generated sound), {SOUND_OUTPUT} files (the sound alone) or a folder")
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
    from avgen.atomic import folder_error

    if out.is_dir():
        return None
    try:
        out.mkdir(parents=True)
    except OSError as exc:
        raise folder_error(out, "the output folder", exc, "give a writable folder with -o") from exc
    return out


def _generate_videos(files: list[Path], targets: dict[Path, tuple[Path | None, Path, Path | None]], trained: tuple,
                     bank: Any, forced: int | None, onsets: tuple, keep_audio: bool,
                     model_name: str) -> list[dict[str, Any]]:
    """Generate each video under one progress bar (seconds of video done); a row per video for the summary.

    In a batch a video that fails (unreadable, no picture) is reported in its row and the others go on."""
    import time

    from avgen.atomic import write_json
    from avgen.console import progress_bar
    from avgen.generate import VideoSound, write_video_sound
    from avgen.media import mux_audio, write_wav

    recipe, encoder, representation, model, meta, dev = trained
    onsets_in, onsets_out, detector_name, train = onsets
    rows: list[dict[str, Any]] = []
    with progress_bar(err_console) as progress:
        task = progress.add_task("generate", total=None)
        jobs: list[tuple[Path, Any]] = []
        for video in files:  # probe every video first: the bar counts windows of all of them
            try:
                job = None if (onsets_in or onsets_out) else VideoSound(
                    video, recipe, encoder, representation, model, meta, dev, exemplar_bank=bank, material=forced)
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
                    wave, summary = _generate_timed(video, onsets_in, onsets_out, detector_name, train, bank,
                                                    trained, progress.console, forced)
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
                         "rtf": rtf, "predicted": summary.get("material") or summary.get("predicted")})
            console.print(str(output))
    return rows


def _batch_error(out: Any, count: int, video: Path, exc: AvgenError) -> None:
    """In a batch, one line for a video that failed (the others go on); a single video's error ends the command."""
    if count > 1:
        out.print(f"[red]error:[/red] {escape(str(video))}: {escape(str(exc))}", highlight=False, soft_wrap=True)


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


def _generate_timed(video: Path, onsets_in: Path | None, onsets_out: Path | None, detector_name: str, train: Any,
                    bank: Any, trained: tuple, out_console: Any, forced: int | None = None) -> tuple[Any, dict[str, Any]]:
    """--onsets-out: detect, write the file, then generate as usual; --onsets: one sound per onset of the file."""
    from avgen.generate import generate_for_video
    from avgen.media import probe
    from avgen.onsets import detect_onsets, read_onsets, sound_at_onsets, summary_line, write_onsets

    from avgen.plugins import create

    recipe, encoder, representation, model, meta, dev = trained
    duration = float(probe(video).duration)
    names = list(meta.get("class_names") or [])
    if onsets_out is not None:
        found = detect_onsets(video, create("detector", detector_name), duration, recipe, encoder, representation, model, meta, dev)
        write_onsets(onsets_out, found, video, duration, detector_name, names)
        out_console.print(f"{onsets_out}: {summary_line(found)}", markup=False, highlight=False)
        return generate_for_video(video, recipe, encoder, representation, model, meta, dev, exemplar_bank=bank,
                                  material=forced)
    onsets = read_onsets(onsets_in, names, duration)
    out_console.print(f"{onsets_in}: {summary_line(onsets)}", markup=False, highlight=False)
    wave = sound_at_onsets(video, onsets, duration, recipe, encoder, representation, model, meta, dev, train=train)
    rate = int(meta.get("sample_rate") or representation.sample_rate)
    return wave, {"video": str(video), "seconds": duration, "sample_rate": rate, "onsets": len(onsets)}


# ---------------------------------------------------------------- cache


@cli.group("cache")
def cache_group() -> None:
    """Inspect or clear the feature cache ($AVGEN_CACHE, default $AVGEN_HOME/cache)."""


@cache_group.command("info")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def cache_info(as_json: bool) -> None:
    """Where the cache is, how many entries and how many bytes."""
    from avgen.cache import FeatureCache

    info = FeatureCache().info()
    if as_json:
        click.echo(json.dumps(info))
    else:
        console.print(f"cache {info['root']}: {info['entries']} entries, {info['bytes'] / 1e6:.1f} MB")


@cache_group.command("clear")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def cache_clear(yes: bool) -> None:
    """Delete every cache entry."""
    from avgen.cache import FeatureCache

    cache = FeatureCache()
    if not yes and sys.stdin.isatty():
        click.confirm(f"delete every entry under {cache.root}?", abort=True)
    console.print(f"removed {cache.clear()} entries from {cache.root}")


# ---------------------------------------------------------------- entry point


INTERRUPTED = "interrupted; finished stages and checkpoints are kept, rerun the same command to resume"  # avgen run


def _interrupted_line(args: list[str]) -> str:
    """The line for Ctrl-C: only `avgen run` resumes where it stopped; the other commands start over."""
    command = next((arg for arg in args if not arg.startswith("-")), None)
    return INTERRUPTED if command == "run" else "interrupted"


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, timeout, a scheduler, docker stop), raised where Ctrl-C would be so the same clean-up runs."""


def _terminate(_signum: int, _frame: Any) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors print one line and exit 2 (``--debug`` shows the traceback)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    with _sigterm_as_interrupt():
        _main(args, debug)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the command as Ctrl-C does (temporary files removed, one line), unless a handler is set."""
    try:
        replace = signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        if replace:
            signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread
        replace = False
    try:
        yield
    finally:
        if replace:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _main(args: list[str], debug: bool) -> None:
    from avgen.threads import prefer_passive_wait

    prefer_passive_wait()  # before anything imports torch (docs/reliability.md, "Threads")
    try:
        code = cli.main(args=args, prog_name="avgen", standalone_mode=False)
        if isinstance(code, int) and code != 0:  # click returns ctx.exit(code) instead of exiting
            sys.exit(code)
    except click.exceptions.Abort as exc:
        if isinstance(exc.__context__, KeyboardInterrupt):  # click turns Ctrl-C into Abort
            err_console.print(_interrupted_line(args), soft_wrap=True)
        else:
            err_console.print("aborted")
        sys.exit(143 if isinstance(exc.__context__, Terminated) else 130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        err_console.print(_interrupted_line(args), soft_wrap=True)
        sys.exit(143 if isinstance(exc, Terminated) else 130)
    except AvgenError as exc:
        if debug:
            traceback.print_exc()
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug, not bad input: keep one line unless --debug
        if debug:
            raise
        err_console.print(f"[red]internal error:[/red] {type(exc).__name__}: {escape(str(exc))} (rerun with --debug for the traceback)",
                          highlight=False, soft_wrap=True)
        sys.exit(1)
