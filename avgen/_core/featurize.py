"""Featurization and split storage: clips -> (wave, features, rep) tensors per split, through the feature cache.

``Featurizer.featurize_split`` decodes each clip (in DataLoader workers), resamples its audio to
the representation's rate, encodes its frames, and stores each clip and then the whole split in
the cache; the tensors it returns are views of memory-mapped files, never held in the heap.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from avgen._core.cache import FeatureCache, cache_key
from avgen._core.console import progress_bar
from avgen._core.errors import AvgenError
from avgen._core.media import MEDIA_VERSION, MediaWarning, fit_frames
from avgen._core.sound import fit_length, resample
from avgen._core.components import Clip
from avgen._core.recipe import Recipe
from avgen._core.rundir import add_to_environment, split_reason
from avgen._core.splits import SplitData, _SplitRows
from avgen._core.plugins import get_component
from avgen._core.precision import PrecisionChoice, autocast_for, check_bf16, choose_precision, native_bf16
from avgen._core.tensorfile import RowWriter, map_safetensors, scratch_file
from avgen._core.threads import worker_init

log = logging.getLogger("avgen")


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
    """Trim or pad (repeating the last frame) to exactly ``count`` frames; a clip without frames is an error."""
    if frames.shape[0] == 0:
        raise AvgenError(f"clip {clip.id} ({clip.video}): no video frames in [{clip.start:.3f}, {clip.start + clip.duration:.3f}] s")
    return fit_frames(frames, count)


# ---------------------------------------------------------------- featurizing a split


@dataclass
class Featurizer:
    """Turns a dataset's clips into split tensors: decode, resample, encode frames and sound, through the cache.

    Each clip's wave and features are cached under a key of everything that produced them
    (``clip_keys``), a whole split under the key of its clips' keys.
    """

    recipe: Recipe
    dataset: Any
    encoder: Any
    representation: Any
    device: torch.device
    console: Console
    cache: FeatureCache
    rank: int = 0  # only rank 0 publishes a split's cache entry
    num_workers: int = 0
    strict: bool = False  # stop at the first unreadable clip instead of skipping it
    clip_entry_limit: int = 256 << 20  # bytes: a larger split keeps only its split entry once that is written
    skipped: dict[str, list[str]] = field(default_factory=dict)  # split -> why each skipped clip was skipped
    precision: PrecisionChoice | None = None  # fp32 or bf16 for the encoder, decided on first need ([featurize])
    probe_clips: int = 8  # clips of the train split whose frames decide [featurize] precision = "auto"
    run_dir: Path | None = None  # where rank 0 records the precision (environment.json), when in a run
    stage_lines: bool = True  # print the featurize stage's own lines (precision, clips per split); else log them only

    @property
    def sample_rate(self) -> int:
        return sample_rate(self.dataset, self.representation)

    def fill_clip_cache(self, split: str, world: int) -> None:
        """Encode this rank's shard of a split's clips into their per-clip cache entries (torchrun)."""
        clips = self.dataset.clips(split)
        keys = self.clip_keys(clips)
        mine = [i for i in range(len(clips)) if i % world == self.rank]
        self._encode_clips(split, [clips[i] for i in mine], [keys[i] for i in mine], *self.sizes(), assemble=False)

    def featurize_split(self, split: str) -> tuple[SplitData, dict[str, Any]]:
        """A split's tensors, mapped from its cache entry, or decoded and encoded now (minutes with a CNN); and counts."""
        dataset, rep = self.dataset, self.representation
        clips = dataset.clips(split)
        samples, frames = self.sizes()
        keys = self.clip_keys(clips)
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
        self._stage_line(f"{split}: {len(clips)} clips ({info['encoded']} featurized, {info['from_cache']} from cache{skipped})",
                         log_it=False)
        return SplitData(clips, wave, label, features, reps), info

    def _stage_line(self, line: str, log_it: bool = True) -> None:
        """A line of the featurize stage: on the console in a run, only in the log for `avgen generate --exemplar`."""
        if self.stage_lines:
            self.console.print(line, markup=False, highlight=False)
        if log_it or not self.stage_lines:
            log.info("%s", line)

    def _drop_bad_clips(self, split: str, clips: list[Clip], problems: dict[int, str]) -> list[Clip]:
        """The clips left after skipping unreadable ones; warns, remembers them for skipped.txt."""
        first = problems[min(problems)]
        if len(problems) == len(clips):
            raise AvgenError(f"all {len(clips)} clips of the {split} split are unreadable; the first: {first}")
        messages = [problems[i] for i in sorted(problems)]
        self.skipped[split] = messages
        warn_skipped(self.console, messages, f"{split} clips")
        return [clip for i, clip in enumerate(clips) if i not in problems]

    def _report_padded(self, split: str, notes: dict[int, list[str]]) -> None:
        """One line for the clips whose audio was padded (each note goes to the log)."""
        first = notes[min(notes)][0]
        more = f" (and {len(notes) - 1} more {split} clips, see log.txt)" if len(notes) > 1 else ""
        self.console.print(f"warning: {first}{more}", markup=False, highlight=False, soft_wrap=True)
        for note in (n for i in sorted(notes) for n in notes[i]):
            log.warning("%s", note)

    def sizes(self) -> tuple[int, int]:
        """(samples per clip at the run's rate, frames per clip at the encoder's fps)."""
        seconds = self.dataset.clip_seconds
        frames = frames_per_clip(seconds, self.encoder.fps) if self.encoder is not None else 0
        return round(seconds * self.sample_rate), frames

    def clip_keys(self, clips: list[Clip]) -> list[str]:
        """Cache keys of each clip's features and waveform (everything that produced them, the precision included)."""
        enc_id = None
        if self.encoder is not None:
            enc_id = self._encoder_id()
            if self.resolve_precision().precision == "bf16":  # fp32 keys stay those of earlier versions
                enc_id += ("bf16",)
        data = self.recipe.data
        audio_id = (data.name, data.params, get_component("dataset", data.name).version, self.sample_rate)
        return [cache_key("clip", _clip_id(c), enc_id, audio_id) for c in clips]

    def _encoder_id(self, tuning: bool = True) -> tuple[Any, ...]:
        from avgen._core.tuning import tuned_identity

        spec = self.recipe.encoder
        ident = (spec.name, spec.params, get_component("encoder", spec.name).version, self.sizes()[1])
        tuned = tuned_identity(self) if tuning else None  # tuned on this run's training split: its own features
        return ident if tuned is None else (*ident, ("tuned", tuned))

    def clip_keys_untuned(self, clips: list[Clip]) -> list[str]:
        """The clips' keys as the frozen encoder's features would have them (what tuning learns from)."""
        return [cache_key("clip", _clip_id(c), self._encoder_id(tuning=False)) for c in clips]

    def resolve_precision(self) -> PrecisionChoice:
        """The encoder's precision: the recipe's, or for 'auto' bf16 where native and the first train batch's
        features agree with fp32 (the check's result is kept in the cache, so a rerun does not repeat it)."""
        if self.precision is None:
            if self.encoder is None:
                self.precision = PrecisionChoice("fp32", "no encoder")
            else:
                self.precision = choose_precision(self.recipe.featurize.precision, self.device, self._bf16_check)
                self._stage_line(self.precision.line("featurize"))
                if self.run_dir is not None and self.rank == 0:
                    add_to_environment(self.run_dir, self.precision.record("featurize"))
        return self.precision

    def _bf16_check(self) -> float | None:
        """Min cosine of bf16 to fp32 features of the first train clips' frames (cached per data, encoder, machine)."""
        clips = self.dataset.clips("train")[: self.probe_clips]
        key = cache_key("bf16-check", self._encoder_id(), [_clip_id(c) for c in clips], torch.__version__, str(self.device),
                        native_bf16(self.device)[1])
        note = self.cache.note(key)
        if note is not None and isinstance(note.get("min_cosine"), float):
            return note["min_cosine"]
        loader = _ClipLoader(self.dataset, clips, self.encoder.fps, self.encoder.input_size, self.sizes()[1])
        frames = [item.frames for item in map(loader.__getitem__, range(len(clips))) if item.problem is None]
        if not frames:
            return None  # nothing readable to check on: stay in fp32
        stacked = torch.cat(frames)
        cosine = check_bf16(lambda: self.encoder.encode(stacked), self.device)
        self.cache.put_note(key, {"min_cosine": cosine})
        return cosine

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
            persistent_workers=False, worker_init_fn=worker_init,
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
                    with autocast_for(self.resolve_precision().precision, self.device):
                        batch_feats = encoder.encode(stacked).float().cpu().reshape(len(good), frames, -1)
                for k, (i, item) in enumerate(good):
                    wave = self._to_rate(item.wave.float(), samples)
                    entry = {"wave": wave}
                    if batch_feats is not None:
                        entry["features"] = batch_feats[k].clone()
                    self.cache.put(keys[i], entry)
                    if rows is not None:
                        rows.put(i, wave, entry.get("features"))
                progress.advance(task, len(batch))

    def _to_rate(self, wave: torch.Tensor, samples: int) -> torch.Tensor:
        """A clip's wave at the run's sample rate, trimmed or zero-padded to ``samples``."""
        return fit_length(resample(wave, int(self.dataset.sample_rate), self.sample_rate), samples).contiguous()


def sample_rate(dataset: Any, representation: Any) -> int:
    """The run's sample rate: the representation's, or the dataset's without one."""
    return int(representation.sample_rate) if representation is not None else int(dataset.sample_rate)


WARN_EACH = 5  # up to this many skipped items get a warning each; more are grouped by reason


_WARNED: set[tuple[str, ...]] = set()  # the warnings ``once`` printed in this process


def warn_skipped(console: Console, messages: list[str], what: str, once: bool = False) -> None:
    """A warning naming each skipped item when there are at most five; more: one warning per reason (its count
    and the first item), e.g. a dataset's 25 rows of material 'None' are one line. All go to the log; with
    ``once``, the console shows the same warning once per process (the variants of a recipe share a dataset)."""
    lines = [f"skipped {message}" for message in messages]
    if len(messages) > WARN_EACH:
        groups: dict[str, list[str]] = {}
        for message in messages:
            groups.setdefault(split_reason(message)[1], []).append(message)
        ordered = sorted(groups.items(), key=lambda item: -len(item[1]))
        lines = [f"skipped {items[0]}" if len(items) == 1 else
                 f"skipped {len(items)} {what}: {reason} (the first: {split_reason(items[0])[0] or items[0]})"
                 for reason, items in ordered[:WARN_EACH]]
        rest = [m for _, items in ordered[WARN_EACH:] for m in items]
        if rest:  # one more is named; more, counted (each is in the log)
            lines.append(f"skipped {rest[0]}" if len(rest) == 1 else f"skipped {len(rest)} more {what} for "
                         f"{len(ordered) - WARN_EACH} other reason{'s' * (len(ordered) > WARN_EACH + 1)} (see log.txt)")
    for line in [] if once and tuple(lines) in _WARNED else lines:
        console.print(f"warning: {line}", markup=False, highlight=False, soft_wrap=True)
    _WARNED.add(tuple(lines))
    for message in messages:
        log.warning("skipped %s", message)


def _clip_id(clip: Clip) -> tuple[Any, ...]:
    return (clip.id, str(clip.video), str(clip.audio), round(clip.start, 6), round(clip.duration, 6), clip.fingerprint,
            ("media", MEDIA_VERSION))


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


def frames_per_clip(seconds: float, fps: float) -> int:
    """How many frames the encoder sees of ``seconds`` of video (a clip, a chunk, a whole video): at least one."""
    return max(1, round(seconds * fps))
