"""A run: prepare -> featurize -> fit -> generate -> evaluate -> report, resumable from its directory.

Each stage is a small function over plugin calls. The stage ledger (``stages.json``) records
finished stages, so running the same recipe again continues after the last one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from avgen import __version__
from avgen.atomic import (
    TEMP_SUFFIX, WriteError, file_mode, folder_error, remove_stale_temp_files, write_error, write_json, write_text,
)
from avgen.baseline import baseline_losses, compare_line
from avgen.cache import FeatureCache, cache_key
from avgen.errors import AvgenError, RunLockedError
from avgen.mapped import RowWriter, map_safetensors, scratch_file
from avgen.components import BuildContext, Clip, EvalContext, GeneratorShape
from avgen.recipe import Recipe
from avgen.registry import get_component

STAGES: tuple[str, ...] = ("prepare", "featurize", "fit", "generate", "evaluate", "report")
SPLITS: tuple[str, ...] = ("train", "val", "test")
log = logging.getLogger("avgen")


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is an error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise AvgenError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    if name == "cuda" and "LOCAL_RANK" in os.environ:  # torchrun: one GPU per process
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(name)


def progress_bar(console: Console) -> Progress:
    """The progress bar style used by every long stage."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
    )


# ---------------------------------------------------------------- the run directory


class RunDir:
    """Files of one run: resolved recipe, environment, ledger, log, lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ledger_path = path / "stages.json"

    def ledger(self) -> dict[str, Any]:
        if not self.ledger_path.is_file():
            return {"stages": {}}
        try:
            return json.loads(self.ledger_path.read_text())
        except (OSError, json.JSONDecodeError):
            raise AvgenError(
                f"{self.ledger_path}: stage ledger is unreadable; rerun with --fresh to start this run over"
            ) from None

    def done(self, stage: str) -> bool:
        return self.ledger()["stages"].get(stage, {}).get("status") == "done"

    def mark(self, stage: str, seconds: float, info: dict[str, Any] | None = None) -> None:
        ledger = self.ledger()
        ledger["stages"][stage] = {"status": "done", "seconds": round(seconds, 3), "finished": time.time(), **(info or {})}
        write_json(self.ledger_path, ledger)

    def forget_from(self, stage: str) -> None:
        """Mark ``stage`` and every later stage as not done."""
        ledger = self.ledger()
        for s in STAGES[STAGES.index(stage):]:
            ledger["stages"].pop(s, None)
        write_json(self.ledger_path, ledger)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold ``run.lock`` for the duration; a second process on the same run dir is refused."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            handle = open(self.path / "run.lock", "a+")
        except OSError as exc:  # a read-only file system, no permission, a file where a folder should be
            raise folder_error(self.path, "the run directory", exc,
                               "choose a writable folder with --out (or run.out in the recipe)") from exc
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise RunLockedError(
                f"{self.path}: another avgen process is using this run directory; wait for it or use another --out"
            ) from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()


def environment_record(seed: int, device: torch.device) -> dict[str, Any]:
    """Versions, seed, device and git commit, for reproducibility."""
    from avgen.plugins import get_plugins

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    plugins = {name: {"distribution": p.distribution, "version": p.version, "error": p.error}
               for name, p in get_plugins().info.items()}
    return {
        "avgen": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "cuda": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
        "seed": seed,
        "git_commit": commit,
        "argv": sys.argv,
        "plugins": plugins,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# ---------------------------------------------------------------- data held between stages


@dataclass
class SplitData:
    """One split's clips and their tensors (features may be None without an encoder).

    After featurize the tensors are views of memory-mapped files (the cached split entry, and a
    scratch file for ``rep``), so a split larger than RAM costs page cache, not heap.
    """

    clips: list[Clip]
    wave: torch.Tensor  # [M, T] at the representation's sample rate
    label: torch.Tensor  # long [M]
    features: torch.Tensor | None = None  # [M, N, feature_dim]
    rep: torch.Tensor | None = None  # [M, D, F]

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"wave": self.wave, "label": self.label}
        if self.features is not None:
            out["features"] = self.features
        if self.rep is not None:
            out["rep"] = self.rep
        return out


class _SplitRows:
    """A split's rows (wave, features) written into a file as they arrive, in clip order.

    The file is a temporary beside the split's cache entry (renamed into place by ``finish`` when
    every clip was readable and ``publish``), or an unnamed scratch file; either way ``finish``
    returns memory-mapped views, so the split is never held in the heap.
    """

    def __init__(self, target: Path | None, scratch_dir: Path, count: int, samples: int, publish: bool) -> None:
        self.target, self.scratch_dir, self.count, self.samples = target, scratch_dir, count, samples
        self.publish = publish and target is not None
        self.file: Any = None
        self.tmp_path: Path | None = None
        self.writer: RowWriter | None = None
        self.published, self.nbytes = False, 0

    def put(self, i: int, wave: torch.Tensor, features: torch.Tensor | None) -> None:
        try:
            if self.writer is None:
                self._open(features)
            self.writer.write("wave", i, wave[None])
            if features is not None:
                self.writer.write("features", i, features[None])
        except OSError as exc:
            raise self._error(exc) from exc

    def _open(self, features: torch.Tensor | None) -> None:
        specs = {"wave": (torch.float32, (self.count, self.samples))}
        if features is not None:
            specs["features"] = (torch.float32, (self.count, *features.shape))
        if self.publish:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{self.target.name}.", suffix=TEMP_SUFFIX, dir=self.target.parent)
            self.file, self.tmp_path = os.fdopen(fd, "w+b"), Path(name)
        else:
            self.file = scratch_file(self.scratch_dir)
        self.writer = RowWriter(self.file, specs)
        self.nbytes = self.writer.size

    def finish(self, problems: dict[int, str]) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(features, wave) of the readable clips, mapped; publishes the split entry when nothing was skipped."""
        if self.writer is None:  # no clip, or none readable
            return None, torch.zeros(0, self.samples)
        try:
            if problems:
                return self._compact([i for i in range(self.count) if i not in problems])
            self.writer.finish(digest=self.publish)
            if self.publish:
                os.fchmod(self.file.fileno(), file_mode())
                os.fsync(self.file.fileno())
                os.replace(self.tmp_path, self.target)
                self.tmp_path, self.published = None, True
        except OSError as exc:
            raise self._error(exc) from exc
        tensors, _ = map_safetensors(self.file)
        return tensors.get("features"), tensors["wave"]

    def _compact(self, kept: list[int], chunk: int = 256) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The rows ``kept`` copied chunk by chunk into a scratch file (a split with skipped clips is not cached)."""
        full, _ = map_safetensors(self.file)
        with scratch_file(self.scratch_dir) as out:
            writer = RowWriter(out, {name: (t.dtype, (len(kept), *t.shape[1:])) for name, t in full.items()})
            for start in range(0, len(kept), chunk):
                index = torch.tensor(kept[start:start + chunk], dtype=torch.long)
                for name, tensor in full.items():
                    writer.write(name, start, tensor[index])
            writer.finish(digest=False)
            tensors, _ = map_safetensors(out)
        return tensors.get("features"), tensors["wave"]

    def _error(self, exc: OSError) -> WriteError:
        return write_error(self.target if self.target is not None else self.scratch_dir, exc)

    def close(self) -> None:
        """Close the file; an unpublished temporary is removed (mapped views stay valid)."""
        if self.file is not None:
            self.file.close()
        if self.tmp_path is not None:
            self.tmp_path.unlink(missing_ok=True)


@dataclass
class LoadedClip:
    """A decoded clip, or why it could not be decoded (``problem``), plus media warnings (``notes``)."""

    index: int
    frames: torch.Tensor | None = None
    wave: torch.Tensor | None = None
    problem: str | None = None
    notes: list[str] = field(default_factory=list)


class _ClipLoader(torch.utils.data.Dataset):
    """Decodes frames and audio of clips (runs in DataLoader workers); a bad file becomes a problem, not a crash."""

    def __init__(self, dataset: Any, clips: list[Clip], fps: float | None, size: int | None, frames: int) -> None:
        self.dataset, self.clips, self.fps, self.size, self.frames = dataset, clips, fps, size, frames

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> LoadedClip:
        import warnings

        from avgen.media import MediaWarning

        clip = self.clips[i]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", MediaWarning)
            try:
                frames = None
                if self.fps is not None:
                    frames = fit_frame_count(self.dataset.load_frames(clip, self.fps, self.size), self.frames, clip)
                wave = self.dataset.load_audio(clip)
                if not bool(torch.isfinite(wave).all()):
                    raise AvgenError(f"audio of '{clip.audio or clip.video}' contains NaN or inf")
            except (AvgenError, OSError) as exc:
                return LoadedClip(i, problem=clip_problem(clip, exc))
        for other in (w for w in caught if not issubclass(w.category, MediaWarning)):  # not ours: pass them on
            warnings.warn_explicit(other.message, other.category, other.filename, other.lineno)
        notes = [str(w.message) for w in caught if issubclass(w.category, MediaWarning)]
        return LoadedClip(i, frames, wave, notes=notes)


def clip_problem(clip: Clip, exc: BaseException) -> str:
    """One line naming the clip, its file and what is wrong with it."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    source = clip.video or clip.audio
    where = f" ({source})" if source is not None and str(source) not in message else ""
    return f"clip {clip.id}{where}: {message}"


def fit_frame_count(frames: torch.Tensor, count: int, clip: Clip) -> torch.Tensor:
    """Trim or pad (repeating the last frame) to exactly ``count`` frames."""
    if frames.shape[0] == 0:
        raise AvgenError(f"clip {clip.id} ({clip.video}): no video frames in [{clip.start:.3f}, {clip.start + clip.duration:.3f}] s")
    if frames.shape[0] >= count:
        return frames[:count]
    pad = frames[-1:].expand(count - frames.shape[0], *frames.shape[1:])
    return torch.cat([frames, pad])


# ---------------------------------------------------------------- the run


@dataclass
class Run:
    """Executes a recipe's stages in a run directory."""

    recipe: Recipe
    run_dir: Path
    device: torch.device
    console: Console = field(default_factory=lambda: Console(stderr=True))
    cache: FeatureCache = field(default_factory=FeatureCache)
    num_workers: int = 0
    strict: bool = False  # stop at the first unreadable clip instead of skipping it
    clip_entry_limit: int = 256 << 20  # bytes: a larger split keeps only its split entry once that is written

    def __post_init__(self) -> None:
        self.recipe = self.recipe.with_absolute_paths()  # the run remembers where its data is, whatever the cwd later
        self.rank, self.world = _join_process_group(self.device)
        if self.rank != 0:
            self.console = Console(stderr=True, quiet=True)
        self.dir = RunDir(self.run_dir)
        self._dataset: Any = None
        self._representation: Any = None
        self._encoder: Any = None
        self._splits: dict[str, SplitData] = {}
        self._skipped: dict[str, list[str]] = {}  # split -> why each skipped clip was skipped

    # ---- components (built on first use)

    @property
    def dataset(self) -> Any:
        if self._dataset is None:
            spec = self.recipe.data
            self._dataset = get_component("dataset", spec.name).build(spec.params)
        return self._dataset

    @property
    def representation(self) -> Any:
        if self._representation is None and self.recipe.representation is not None:
            spec = self.recipe.representation
            rep = get_component("representation", spec.name).build(spec.params)
            self._representation = rep.to(self.device)
        return self._representation

    @property
    def encoder(self) -> Any:
        if self._encoder is None and self.recipe.encoder is not None:
            spec = self.recipe.encoder
            self._encoder = get_component("encoder", spec.name).build(spec.params, BuildContext(device=self.device))
        return self._encoder

    @property
    def sample_rate(self) -> int:
        rep = self.representation
        return int(rep.sample_rate) if rep is not None else int(self.dataset.sample_rate)

    def preflight(self) -> None:
        """Build the dataset and representation now, so their errors come before the run directory exists."""
        _ = self.dataset
        rep = self.representation
        if rep is not None:
            check_phases(self.recipe, rep)

    # ---- driver

    def execute(self, only: str | None = None, fresh: bool = False) -> dict[str, Any]:
        """Run every stage not yet done (or just ``only``); returns the ledger.

        Under ``torchrun`` every rank featurizes its shard and trains; rank 0 alone holds the
        lock, writes the run directory and runs prepare, generate, evaluate and report.
        """
        main = self.rank == 0
        with self.dir.lock() if main else contextlib.nullcontext(), _run_log(self.run_dir / "log.txt", main):
            if main:
                self._start(fresh)
            self._barrier()
            stages = STAGES if only is None else (only,)
            for stage in stages:
                if only is None and self.dir.done(stage):
                    self.console.print(f"[dim]{stage}: done earlier, skipped[/dim]")
                    continue
                if only is not None and main and stage != "report":
                    self.dir.forget_from(stage)
                started = time.perf_counter()
                self.console.rule(f"[bold]{stage}")
                log.info("stage %s started", stage)
                info = {}
                if main or stage in ("featurize", "fit"):
                    info = getattr(self, f"stage_{stage}")() or {}
                elif stage == "prepare":
                    self._barrier()  # rank 0 makes the data available first
                    self.dataset.prepare(None)
                if main and stage == "prepare":
                    self._barrier()
                seconds = time.perf_counter() - started
                if main:
                    self.dir.mark(stage, seconds, info)
                self._barrier()
                log.info("stage %s done in %.1f s %s", stage, seconds, json.dumps(info, default=str))
            return self.dir.ledger()

    def _barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def _start(self, fresh: bool) -> None:
        resolved = self.recipe.to_toml_dict()
        recipe_id = cache_key(resolved)
        existing = self.dir.ledger() if self.dir.ledger_path.is_file() else None
        if fresh and self.run_dir.exists():
            for name in ("stages.json", "metrics.json", "history.json", "report.html", "report.md", "dataset.json",
                         "skipped.txt"):
                (self.run_dir / name).unlink(missing_ok=True)
            for sub in ("checkpoints", "generated", "figures"):
                _remove_tree(self.run_dir / sub)
            existing = None
        elif existing is not None and existing.get("recipe_id") not in (None, recipe_id):
            if _finished_beyond_prepare(existing):
                raise AvgenError(
                    f"{self.run_dir}: holds a run of a different recipe (or different --set values); "
                    "add --fresh to start it over or choose another --out"
                )
            existing = None  # an earlier attempt that failed before featurize finished: start over
            self.dir.ledger_path.unlink(missing_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if removed := remove_stale_temp_files(self.run_dir):  # left by a killed process; we hold the lock
            log.info("removed %d temporary files left by an interrupted write", removed)
        write_text(self.run_dir / "recipe.toml", dump_toml(resolved))
        write_json(self.run_dir / "environment.json", environment_record(self.recipe.run.seed, self.device))
        ledger = self.dir.ledger()
        ledger["recipe_id"] = recipe_id
        write_json(self.dir.ledger_path, ledger)

    # ---- stages

    def stage_prepare(self) -> dict[str, Any]:
        with progress_bar(self.console) as progress:
            self.dataset.prepare(progress)
        counts = {split: len(self.dataset.clips(split)) for split in SPLITS}
        rows = self._dataset_skipped_rows()
        self._warn_skipped([message for split in SPLITS for message in rows[split]], "annotation rows")
        if counts["train"] == 0:
            raise AvgenError(f"dataset '{self.recipe.data.name}': the train split has no clips; check its root and split files")
        write_json(self.run_dir / "dataset.json", {
            "name": self.recipe.data.name, "class_names": list(self.dataset.class_names), "splits": counts,
            "sample_rate": self.dataset.sample_rate, "clip_seconds": self.dataset.clip_seconds,
        })
        self._write_skipped()
        self.console.print("clips: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        skipped = {split: len(rows[split]) for split in SPLITS if rows[split]}
        return {"clips": counts, **({"skipped_rows": skipped} if skipped else {})}

    def stage_featurize(self) -> dict[str, Any]:
        stats: dict[str, Any] = {}
        if self.world > 1:  # each rank fills the per-clip cache for its shard, then all read it back
            for split in SPLITS:
                clips = self.dataset.clips(split)
                keys = self._clip_keys(clips)
                mine = [i for i in range(len(clips)) if i % self.world == self.rank]
                self._encode_clips(split, [clips[i] for i in mine], [keys[i] for i in mine], *self._sizes(), assemble=False)
            self._barrier()
        self._skipped.clear()
        for turn in (0, 1) if self.world > 1 else (0,):  # rank 0 writes the split entries, then the others map them
            if (self.rank == 0) == (turn == 0):
                for split in SPLITS:
                    data, info = self._featurize_split(split)
                    self._splits[split] = data
                    stats[split] = info
            if turn == 0:
                self._barrier()
        if self.rank == 0:
            self._write_skipped()
        return stats

    def split(self, split: str) -> SplitData:
        """A split's tensors (from memory, the cache, or computed now)."""
        if split not in self._splits:
            self._splits[split], _ = self._featurize_split(split)
        return self._splits[split]

    def _featurize_split(self, split: str) -> tuple[SplitData, dict[str, Any]]:
        dataset, rep = self.dataset, self.representation
        clips = dataset.clips(split)
        samples, frames = self._sizes()
        keys = self._clip_keys(clips)
        split_key = cache_key("split", keys)
        cached = self.cache.get(split_key, mapped=True)
        info: dict[str, Any] = {"clips": len(clips), "encoded": 0, "from_cache": 0}
        if cached is not None:
            info["from_cache"] = len(clips)
            features, wave = cached.get("features"), cached["wave"]
        else:
            features, wave, encoded, problems, notes = self._encode_clips(split, clips, keys, samples, frames,
                                                                          split_key=split_key)
            info["encoded"] = encoded
            info["from_cache"] = len(clips) - encoded - len(problems)
            if notes:
                info["padded"] = len(notes)
                self._report_padded(split, notes)
            if problems:  # a split with skipped clips is not cached whole: its bad files are retried next time
                clips = self._drop_bad_clips(split, clips, problems)
                info["skipped"] = len(problems)
        _check_finite(wave, clips, "audio")
        if features is not None:
            _check_finite(features, clips, "visual features")
        label = torch.tensor([c.label for c in clips], dtype=torch.long)
        reps = None
        if rep is not None and len(clips):
            reps = self._encode_rep(wave)
        skipped = f", {info['skipped']} skipped: see skipped.txt" if info.get("skipped") else ""
        self.console.print(
            f"{split}: {len(clips)} clips ({info['encoded']} featurized, {info['from_cache']} from cache{skipped})",
            markup=False,
        )
        return SplitData(clips, wave, label, features, reps), info

    def _drop_bad_clips(self, split: str, clips: list[Clip], problems: dict[int, str]) -> list[Clip]:
        """The clips left after skipping unreadable ones; warns, remembers them for skipped.txt."""
        first = problems[min(problems)]
        if len(problems) == len(clips):
            raise AvgenError(f"all {len(clips)} clips of the {split} split are unreadable; the first: {first}")
        messages = [problems[i] for i in sorted(problems)]
        self._skipped[split] = messages
        self._warn_skipped(messages, f"{split} clips")
        return [clip for i, clip in enumerate(clips) if i not in problems]

    def _warn_skipped(self, messages: list[str], what: str) -> None:
        """A warning for each of the first five skipped items (then a count of the rest); all of them go to the log."""
        for message in messages[:5]:
            self.console.print(f"warning: skipped {message}", markup=False, highlight=False, soft_wrap=True)
        if len(messages) > 5:
            self.console.print(f"warning: skipped {len(messages) - 5} more {what}", markup=False)
        for message in messages:
            log.warning("skipped %s", message)

    def _dataset_skipped_rows(self) -> dict[str, list[str]]:
        """Annotation rows the dataset left out of each split (e.g. a hit time of inf), when it reports them."""
        return {split: list(self.dataset.skipped_rows(split)) for split in SPLITS}

    def _report_padded(self, split: str, notes: dict[int, list[str]]) -> None:
        """One line for the clips whose audio was padded (each note goes to the log)."""
        first = notes[min(notes)][0]
        more = f" (and {len(notes) - 1} more {split} clips, see log.txt)" if len(notes) > 1 else ""
        self.console.print(f"warning: {first}{more}", markup=False, highlight=False, soft_wrap=True)
        for note in (n for i in sorted(notes) for n in notes[i]):
            log.warning("%s", note)

    def _write_skipped(self) -> None:
        """skipped.txt: one line per skipped annotation row or clip (split, then why), or no file when none was skipped."""
        path = self.run_dir / "skipped.txt"
        rows = self._dataset_skipped_rows()
        lines = [f"{split}\t{message}" for split in SPLITS for message in rows[split] + self._skipped.get(split, [])]
        if lines:
            write_text(path, "\n".join(lines) + "\n")
        else:
            path.unlink(missing_ok=True)

    def _sizes(self) -> tuple[int, int]:
        """(samples per clip at the run's rate, frames per clip at the encoder's fps)."""
        seconds = self.dataset.clip_seconds
        frames = max(1, round(seconds * self.encoder.fps)) if self.encoder is not None else 0
        return round(seconds * self.sample_rate), frames

    def _clip_keys(self, clips: list[Clip]) -> list[str]:
        """Cache keys of each clip's features and waveform (everything that produced them)."""
        enc_id = None
        if self.encoder is not None:
            spec = self.recipe.encoder
            enc_id = (spec.name, spec.params, get_component("encoder", spec.name).version, self._sizes()[1])
        data = self.recipe.data
        audio_id = (data.name, data.params, get_component("dataset", data.name).version, self.sample_rate)
        return [cache_key("clip", _clip_id(c), enc_id, audio_id) for c in clips]

    def _encode_rep(self, wave: torch.Tensor, batch: int = 64) -> torch.Tensor:
        """The representation of every row of ``wave``, written batch by batch to a mapped scratch file."""
        rep = self.representation
        with scratch_file(self.cache.root) as file:
            writer = None
            with torch.no_grad():  # not inference_mode: these are training targets
                for i in range(0, wave.shape[0], batch):
                    out = rep.encode(wave[i:i + batch].to(self.device)).float().cpu()
                    if writer is None:
                        writer = RowWriter(file, {"rep": (torch.float32, (wave.shape[0], *out.shape[1:]))})
                    writer.write("rep", i, out)
            writer.finish(digest=False)
            return map_safetensors(file)[0]["rep"]

    def _encode_clips(self, split: str, clips: list[Clip], keys: list[str], samples: int, frames: int,
                      split_key: str | None = None, assemble: bool = True
                      ) -> tuple[torch.Tensor | None, torch.Tensor, int, dict[int, str], dict[int, list[str]]]:
        """(features, waves) of the readable clips, how many were encoded now, problems and media
        warnings by clip index. With ``strict`` the first unreadable clip is an error.

        Each clip is stored in its own cache entry as soon as it is encoded (so a killed run resumes
        where it stopped) and, with ``assemble``, written as a row of the split file; the tensors
        returned are views of that file's memory map. Without problems rank 0 publishes the file
        as the split's cache entry ``split_key``; a split over ``clip_entry_limit`` bytes then drops
        its per-clip entries. Without ``assemble`` only the per-clip entries are filled (torchrun shards).
        """
        encoder = self.encoder
        problems: dict[int, str] = {}
        notes: dict[int, list[str]] = {}
        rows = _SplitRows(self.cache.path(split_key) if split_key else None, self.cache.root, len(clips), samples,
                          publish=self.rank == 0) if assemble else None
        try:
            todo = []
            for i, key in enumerate(keys):
                entry = self.cache.get(key)
                if entry is not None and (encoder is None or "features" in entry):
                    if rows is not None:
                        rows.put(i, entry["wave"], entry.get("features"))
                else:
                    todo.append(i)
            if todo:
                self._encode_todo(split, clips, keys, todo, samples, frames, rows, problems, notes)
            features, wave = rows.finish(problems) if rows is not None else (None, torch.zeros(0, samples))
        finally:
            if rows is not None:
                rows.close()
        if rows is not None and rows.published and rows.nbytes > self.clip_entry_limit:
            for key in keys:  # the split entry now holds them; keeping both would double the disk used
                self.cache.path(key).unlink(missing_ok=True)
        return features, wave, len(todo) - len(problems), problems, notes

    def _encode_todo(self, split: str, clips: list[Clip], keys: list[str], todo: list[int], samples: int, frames: int,
                     rows: _SplitRows | None, problems: dict[int, str], notes: dict[int, list[str]]) -> None:
        """Decode and encode the clips ``todo``: per-clip cache entries, rows, problems and notes."""
        encoder = self.encoder
        loader = torch.utils.data.DataLoader(
            _ClipLoader(self.dataset, [clips[i] for i in todo],
                        encoder.fps if encoder is not None else None,
                        encoder.input_size if encoder is not None else None, frames),
            batch_size=8, num_workers=self.num_workers, collate_fn=list,
            persistent_workers=False,
        )
        with progress_bar(self.console) as progress:
            task = progress.add_task(f"featurize {split}", total=len(todo))
            for batch in loader:
                good = []
                for item in batch:
                    i = todo[item.index]
                    if item.problem is None:
                        good.append((i, item))
                        if item.notes:
                            notes[i] = item.notes
                    elif self.strict:
                        raise AvgenError(f"{item.problem} (--strict stops at the first unreadable clip; "
                                         "without it such clips are skipped)")
                    else:
                        problems[i] = item.problem
                batch_feats = None
                if encoder is not None and good:
                    stacked = torch.cat([item.frames for _, item in good])
                    batch_feats = encoder.encode(stacked).float().cpu().reshape(len(good), frames, -1)
                for k, (i, item) in enumerate(good):
                    wave = self._to_rate(item.wave.float(), samples, clips[i])
                    entry = {"wave": wave}
                    if batch_feats is not None:
                        entry["features"] = batch_feats[k].clone()
                    self.cache.put(keys[i], entry)
                    if rows is not None:
                        rows.put(i, wave, entry.get("features"))
                progress.advance(task, len(batch))

    def _to_rate(self, wave: torch.Tensor, samples: int, clip: Clip) -> torch.Tensor:
        src = int(self.dataset.sample_rate)
        if src != self.sample_rate:
            import torchaudio.functional as AF

            wave = AF.resample(wave, src, self.sample_rate)
        if wave.shape[-1] < samples:
            wave = torch.nn.functional.pad(wave, (0, samples - wave.shape[-1]))
        return wave[:samples].contiguous()

    def stage_fit(self) -> dict[str, Any]:
        if self.recipe.generator is None:
            self.console.print("no [generator] in the recipe: nothing to train", markup=False)
            return {"skipped": "no generator"}
        from avgen.train import WeightedLoss, fit

        train, val = self.split("train"), self.split("val")
        model, shape = self.build_generator()
        losses = [
            WeightedLoss(spec.name, spec.weight,
                         get_component("loss", spec.name).build(spec.params, BuildContext(device=self.device, representation=self.representation)))
            for spec in self.recipe.loss
        ]
        if not losses:
            raise AvgenError(f"{self.recipe.source}: a [generator] needs at least one [[loss]] entry")
        result = fit(
            model=model, losses=losses, train=train.tensors(), val=val.tensors() if len(val.clips) else None,
            params=self.recipe.train, run_dir=self.run_dir, seed=self.recipe.run.seed, device=self.device,
            representation=self.representation, meta=self.checkpoint_meta(shape), console=self.console,
        )
        info = {"best_epoch": result.best_epoch, "stopped_early": result.stopped_early, "epochs": len(result.history)}
        if not result.history:  # train.epochs = 0: the results would pass for a trained model's
            info["untrained"] = True
            self.console.print("warning: train.epochs = 0: the model is untrained; generate and evaluate use its initial "
                               "random weights and the report is marked UNTRAINED", markup=False, highlight=False,
                               soft_wrap=True)
        best = next((e["val"] for e in result.history if e["epoch"] == result.best_epoch), None)
        if best:
            baseline = baseline_losses(losses, model, train.tensors(), val.tensors(), batch_size=self.recipe.train.batch_size)
            info.update(val=best, baseline_val=baseline)
            line = compare_line(best, baseline, result.best_epoch)
            if line:
                self.console.print(line, markup=False, highlight=False)
        return info

    def build_generator(self) -> tuple[torch.nn.Module, GeneratorShape]:
        spec = self.recipe.generator
        train = self.split("train")
        if train.features is None or train.rep is None:
            raise AvgenError(f"{self.recipe.source}: [generator] needs an [encoder] and a [representation]")
        shape = GeneratorShape(
            feature_dim=int(train.features.shape[-1]), rep_dim=int(train.rep.shape[1]),
            steps=int(train.rep.shape[2]), num_classes=len(self.dataset.class_names),
        )
        torch.manual_seed(self.recipe.run.seed)  # the initial weights depend on the seed only
        model = get_component("generator", spec.name).build(spec.params, BuildContext(device=self.device, shape=shape))
        return model.to(self.device), shape

    def checkpoint_meta(self, shape: GeneratorShape) -> dict[str, Any]:
        return {
            "recipe": self.recipe.to_toml_dict(),
            "class_names": list(self.dataset.class_names),
            "shape": shape.__dict__,
            "sample_rate": self.sample_rate,
            "clip_seconds": self.dataset.clip_seconds,
            "avgen": __version__,
        }

    def stage_generate(self) -> dict[str, Any]:
        if self.recipe.generator is None:
            self.console.print("no [generator] in the recipe: nothing to generate", markup=False)
            return {"skipped": "no generator"}
        from avgen.generate import generate_split

        return generate_split(self)

    def stage_evaluate(self) -> dict[str, Any]:
        ctx = self.eval_context()
        metrics: dict[str, Any] = {}
        for spec in self.recipe.metric:
            metric = get_component("metric", spec.name).build(spec.params)
            started = time.perf_counter()
            values = metric.compute(ctx)
            metrics[spec.name] = {k: _number(v) for k, v in values.items()}
            self.console.print(f"{spec.name}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in values.items())
                               + f" [dim]({time.perf_counter() - started:.1f} s)[/dim]")
        write_json(self.run_dir / "metrics.json", metrics)
        return {"metrics": list(metrics)}

    def eval_context(self) -> EvalContext:
        split = self.recipe.eval.split
        test, train = self.split(split), self.split("train")
        from avgen.generate import load_generated
        from avgen.retrieval import time_average

        generated = load_generated(self.run_dir)
        return EvalContext(
            run_dir=self.run_dir, sample_rate=self.sample_rate, class_names=list(self.dataset.class_names),
            test_ids=[c.id for c in test.clips], test_labels=test.label, real_waves=test.wave, real_reps=test.rep,
            train_labels=train.label, train_waves=lambda: train.wave, train_bank=lambda: time_average(train.rep),
            predicted_reps=generated.get("rep"), generated={k: generated[k] for k in ("raw", "exemplar") if k in generated},
            retrieved=generated.get("retrieved"), representation=self.representation, device=self.device,
            extra={"dataset_hash": cache_key(self.recipe.data.name, self.recipe.data.params, [c.id for c in train.clips]),
                   "dataset": self.recipe.data.name},
        )

    def stage_report(self) -> dict[str, Any]:
        from avgen.report import write_report

        html, md = write_report(self.run_dir)
        self.console.print(f"report: {html}")
        return {"html": str(html), "md": str(md)}


def check_phases(recipe: Recipe, representation: Any) -> None:
    """eval.phase must be a phase the representation declares, other than 'given' (generated sound has no reference)."""
    phases = tuple(representation.phases)
    name = recipe.representation.name if recipe.representation else "?"
    if recipe.eval.phase not in phases or recipe.eval.phase == "given":
        choices = ", ".join(p for p in phases if p != "given") or "none"
        raise AvgenError(f"{recipe.source}: eval.phase = {recipe.eval.phase!r}: representation '{name}' decodes with {choices}")


def _join_process_group(device: torch.device) -> tuple[int, int]:
    """(rank, world size): joins the torchrun process group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _finished_beyond_prepare(ledger: dict[str, Any]) -> bool:
    """Whether a ledger records a finished stage whose results depend on more than the data."""
    return any(info.get("status") == "done" for stage, info in ledger.get("stages", {}).items() if stage != "prepare")


def _clip_id(clip: Clip) -> tuple[Any, ...]:
    return (clip.id, str(clip.video), str(clip.audio), round(clip.start, 6), round(clip.duration, 6), clip.fingerprint)


def _check_finite(x: torch.Tensor, clips: list[Clip], what: str, chunk: int = 256) -> None:
    """AvgenError naming the first clip whose row of ``x`` holds NaN or inf (checked ``chunk`` rows at a time)."""
    for start in range(0, x.shape[0], chunk):  # an empty split (e.g. val_fraction = 0) has nothing to check
        part = x[start:start + chunk]
        bad = ~torch.isfinite(part.reshape(part.shape[0], -1)).all(dim=1)
        if not bad.any():
            continue
        i = start + int(bad.nonzero()[0])
        raise AvgenError(f"clip {clips[i].id} ({clips[i].audio or clips[i].video}): {what} contain NaN or inf; "
                         "fix or remove the file")


def _number(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.item()
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


@contextmanager
def _run_log(path: Path, enabled: bool = True) -> Iterator[None]:
    """Send the 'avgen' logger to the run's log.txt while the run executes (then to it no more)."""
    if not enabled:
        yield
        return
    handler = logging.FileHandler(path, encoding="utf-8", delay=True)  # opened at the first line: a refused run leaves none
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("avgen")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()


def dump_toml(data: dict[str, Any]) -> str:
    """Write a recipe dict as TOML (tables, arrays of tables, scalars and lists)."""
    lines: list[str] = ["# resolved recipe written by avgen " + __version__]
    for key, value in data.items():
        if isinstance(value, dict):
            lines += ["", f"[{key}]"] + [f"{k} = {_toml_value(v)}" for k, v in value.items()]
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                lines += ["", f"[[{key}]]"] + [f"{k} = {_toml_value(v)}" for k, v in item.items()]
        else:
            lines.insert(1, f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v) if v == v and v not in (float("inf"), float("-inf")) else ("nan" if v != v else ("inf" if v > 0 else "-inf"))
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    return json.dumps(str(v), ensure_ascii=False)
