"""The generate stage: raw sound (decode of s') and exemplar sound (paper Eq. 8) per test clip."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch
from safetensors.torch import load_file, save_file

from avgen._core.atomic import atomic_path, write_json
from avgen._core.build import raw_phase
from avgen._core.errors import AvgenError, shown
from avgen._core.media import fit_frames

if TYPE_CHECKING:
    from avgen._core.featurize import SplitData
    from avgen._core.recipe import Recipe

OUTPUTS = "generated/outputs.safetensors"


def predict(model: torch.nn.Module, features: torch.Tensor, device: torch.device, batch: int = 256,
            labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Run a generator over features [N, frames, dim] in batches; outputs on the CPU.

    With ``labels`` [N] the class is forced (``Generator.class_outputs``), as ``--material`` asks.
    """
    model.eval()
    outs: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for i in range(0, features.shape[0], batch):
            chunk = features[i:i + batch].to(device)
            result = model(chunk) if labels is None else model.class_outputs(chunk, labels[i:i + batch].to(device))
            for key, value in result.items():
                if isinstance(value, torch.Tensor):
                    outs.setdefault(key, []).append(value.float().cpu())
    return {k: torch.cat(v) for k, v in outs.items()}


def decode(representation: Any, reps: torch.Tensor, phase: str, length: int, device: torch.device,
           batch: int = 64, reference: torch.Tensor | None = None) -> torch.Tensor:
    """Waveforms [N, length] from representations [N, D, F]; ``reference`` [N, T'] is passed on to
    ``Representation.decode`` (the sound so far, for a representation that ``continues_phase``)."""
    waves = []
    with torch.no_grad():
        for i in range(0, reps.shape[0], batch):
            extra = {} if reference is None else {"reference": reference[i:i + batch].to(device)}
            wave = representation.decode(reps[i:i + batch].to(device), phase=phase, length=length, **extra)
            waves.append(wave.float().cpu())
    return torch.cat(waves) if waves else torch.zeros(0, length)


def generate_split(*, recipe: "Recipe", run_dir: Path, model: torch.nn.Module, test: "SplitData", train: "SplitData",
                   representation: Any, class_names: list[str], sample_rate: int, device: torch.device,
                   console: Any) -> dict[str, Any]:
    """Load the best checkpoint into ``model``; write raw and exemplar wavs, the index and the tensors the metrics read."""
    from avgen._core.checkpoint import load_checkpoint
    from avgen._core.media import write_wav
    from avgen._core.retrieval import build_index, search, time_average

    ckpt = run_dir / "checkpoints" / "best.safetensors"
    if not ckpt.is_file():
        raise AvgenError(f"{ckpt}: no trained checkpoint; run the fit stage first (avgen run RECIPE --only fit)")
    state, _meta = load_checkpoint(ckpt)
    model.load_state_dict(state)
    outputs = predict(model, test.features, device)
    reps = outputs["rep"]
    length = test.wave.shape[-1]
    phase = raw_phase(recipe, representation)
    console.print(f"decoding {reps.shape[0]} clips ({phase})")
    raw = decode(representation, reps, phase, length, device)
    k = min(recipe.eval.top_k, len(train.clips))
    queries = time_average(reps)
    _, retrieved = search(build_index(recipe.index, time_average(train.rep)), queries, k)
    exemplar, from_library = train.wave[retrieved[:, 0]], None
    if recipe.eval.library is not None:  # exemplar sounds from the user's library; R@K keeps the training clips
        spec = recipe.representation
        bank = library_bank(recipe.eval.library, representation, {"name": spec.name, **spec.params},
                            length / sample_rate, console)
        scores, nearest = search(build_index(recipe.index, bank.reps), queries, 1)
        exemplar = bank.waves[nearest[:, 0]].float()
        from_library = [{**bank.entries[int(j)], "similarity": round(float(v), 6)} for j, v in zip(nearest[:, 0], scores[:, 0])]
    probabilities = model.class_probabilities(outputs)
    predicted = probabilities.argmax(-1) if probabilities is not None else None

    out_dir = run_dir / "generated"
    tensors = {"rep": reps, "raw": raw, "exemplar": exemplar, "retrieved": retrieved}
    if predicted is not None:
        tensors["predicted"] = predicted
    with atomic_path(run_dir / OUTPUTS) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    names = class_names
    from avgen._core.report import pick_examples

    examples = [c.id for c in pick_examples(test.clips, recipe.eval.examples)]  # spread over classes and videos
    clips = []
    for i, clip in enumerate(test.clips):
        raw_path, ex_path = f"generated/raw/{clip.id}.wav", f"generated/exemplar/{clip.id}.wav"
        write_wav(run_dir / raw_path, raw[i], sample_rate)
        write_wav(run_dir / ex_path, exemplar[i], sample_rate)
        if clip.id in examples:
            write_wav(run_dir / f"generated/real/{clip.id}.wav", test.wave[i], sample_rate)
        clips.append({
            "id": clip.id, "label": clip.label, "class": names[clip.label] if clip.label >= 0 else None,
            "predicted": int(predicted[i]) if predicted is not None else None,
            "exemplar_id": train.clips[int(retrieved[i, 0])].id if from_library is None else None,
            **({"exemplar_library": from_library[i]} if from_library is not None else {}),
            "retrieved": [train.clips[int(j)].id for j in retrieved[i] if j >= 0],  # -1: an approximate index's empty slot
            "raw": raw_path, "exemplar": ex_path,
        })
    write_json(out_dir / "index.json", {"clips": clips, "examples": examples, "sample_rate": sample_rate})
    return {"clips": len(clips)}


def load_generated(run_dir: Path) -> dict[str, torch.Tensor]:
    """The generate stage's tensors, or {} when the run has no generator."""
    path = Path(run_dir) / OUTPUTS
    if not path.is_file():
        return {}
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise AvgenError(f"{path}: unreadable ({exc}); rerun the generate stage: avgen run RECIPE --only generate") from exc


# ---------------------------------------------------------------- avgen generate: any video -> sound


GENERATION_SECTIONS = ("generator", "representation", "eval", "index")  # what `avgen generate --set` may change


def load_trained(run_dir: Path, device: torch.device, overrides: tuple[str, ...] | list[str] = (),
                 ) -> tuple[Any, Any, Any, torch.nn.Module, dict[str, Any]]:
    """(recipe, encoder, representation, generator, meta) rebuilt from a run directory alone.

    ``overrides`` (``key.path=value``, as ``avgen run --set``) change generation settings of the
    run's recipe, e.g. a sampler's steps; a change the trained weights do not fit is an error.
    """
    from avgen._core.checkpoint import load_run_checkpoint
    from avgen._core.components import SavedModel

    run_dir = Path(run_dir)
    ckpt, state, meta = load_run_checkpoint(run_dir)
    try:  # the precision the run's features were made in: generate encodes frames the same way where it can
        environment = json.loads((run_dir / "environment.json").read_text())
        meta = {**meta, "featurize_precision": environment.get("featurize_precision", "fp32")}
    except (OSError, ValueError, AttributeError):
        pass
    return build_saved(SavedModel(state, meta), run_dir / "recipe.toml", ckpt, device, overrides)


def build_saved(saved: Any, recipe_source: Path, weights_source: Path, device: torch.device,
                overrides: tuple[str, ...] | list[str] = (),
                ) -> tuple[Any, Any, Any, torch.nn.Module, dict[str, Any]]:
    """(recipe, encoder, representation, generator, meta) rebuilt from an ``avgen.SavedModel`` (weights and meta),
    with ``overrides`` applied to its recipe's generation settings."""
    import copy

    from avgen._core.build import build_encoder, build_generator, build_representation
    from avgen._core.components import GeneratorShape
    from avgen._core.recipe import apply_override, validate_recipe

    meta = saved.meta
    if not isinstance(meta.get("recipe"), dict) or not isinstance(meta.get("shape"), dict):
        raise AvgenError(f"{recipe_source}: carries no recipe/shape; it was not written by avgen")
    raw = copy.deepcopy(meta["recipe"])
    for item in overrides:
        if item.split("=", 1)[0].strip().split(".", 1)[0] not in GENERATION_SECTIONS:
            raise AvgenError(f"--set {shown(item)}: generate can change only {', '.join(GENERATION_SECTIONS)} settings, "
                             "e.g. --set generator.steps=4")
        apply_override(raw, item)
    recipe = validate_recipe(raw, recipe_source)
    if recipe.encoder is None or recipe.representation is None or recipe.generator is None:
        raise AvgenError(f"{recipe_source}: the recipe has no encoder, representation or generator")
    encoder = build_encoder(recipe, device)
    representation = build_representation(recipe, device)
    model = build_generator(recipe, GeneratorShape(**meta["shape"]))
    try:
        model.load_state_dict(saved.weights)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise AvgenError(f"{weights_source}: its weights do not fit {recipe.generator.name} ({first}); retrain with avgen run RECIPE --fresh") from exc
    return recipe, encoder, representation, model.to(device).eval(), meta


def load_model_folder(path: Path, device: torch.device, overrides: tuple[str, ...] | list[str] = (),
                      ) -> tuple[Any, Any, Any, torch.nn.Module, dict[str, Any], Any]:
    """(recipe, encoder, representation, generator, meta, bank or None) from a model folder a plugin reads
    (the ``open_model`` hook; ``avgen export`` writes such folders)."""
    from avgen._core.plugins import first_answer

    path = Path(path)
    if not path.is_dir():
        raise AvgenError(f"--model {path}: not a folder; give the folder `avgen export RUN_DIR OUT_DIR` wrote")
    if (path / "checkpoints").is_dir():
        raise AvgenError(f"--model {path}: this is a run directory; use --run {path}, or export it first")
    saved = first_answer("open_model", path=path)
    if saved is None:
        raise AvgenError(f"--model {path}: not a model folder that an installed plugin reads "
                         "(`avgen export RUN_DIR OUT_DIR` writes them, with config.json and SHA256SUMS)")
    built = build_saved(saved, path / "config.json", path, device, overrides)
    return (*built, saved.bank)


def saved_model_of_run(run_dir: Path, device: torch.device, exemplars: bool = True, console: Any = None) -> Any:
    """A run's best model as an ``avgen.SavedModel`` (weights, meta, and with ``exemplars`` its training bank)."""
    from avgen._core.checkpoint import load_run_checkpoint
    from avgen._core.components import SavedModel

    run_dir = Path(run_dir)
    ckpt, state, meta = load_run_checkpoint(run_dir)
    bank = None
    if exemplars:  # the encoder and representation of the checkpoint already read (not a second load_trained)
        recipe, encoder, representation, _, _ = build_saved(SavedModel(state, meta), run_dir / "recipe.toml", ckpt, device)
        bank = exemplar_bank(recipe, run_dir, device, encoder, representation, console=console)
    return SavedModel(state, meta, bank)


def library_bank(path: Path, representation: Any, representation_spec: dict[str, Any], seconds: float,
                 console: Any) -> Any:
    """An ``avgen.ExemplarBank`` of the sound folder ``path`` (clips of ``seconds``), indexed by a plugin
    (the ``open_library`` hook)."""
    from avgen._core.plugins import first_answer

    path = Path(path)
    if not path.is_dir():
        raise AvgenError(f"--library {path}: not a folder; give a folder of wav/flac/ogg/mp3 files")
    bank = first_answer("open_library", path=path, representation=representation,
                        representation_spec=representation_spec, clip_seconds=seconds, console=console)
    if bank is None:
        raise AvgenError(f"--library {path}: no installed plugin indexes sound folders (avgen's share plugin does)")
    return bank


def material_class(name: str, meta: dict[str, Any]) -> int:
    """The class index of ``--material NAME`` among the model's classes."""
    names = list(meta.get("class_names") or [])
    if name not in names:
        listed = ", ".join(names) if names else "none"
        raise AvgenError(f"--material {shown(name)} is not a class of this model; its classes: {listed}")
    return names.index(name)


def clip_seconds(recipe: Any, meta: dict[str, Any]) -> float:
    """The length of the clips the model was trained on."""
    return float(meta.get("clip_seconds") or recipe.data.params.get("clip_seconds", 0.5))


def exemplar_bank(recipe: "Recipe", run_dir: Path, device: torch.device, encoder: Any, representation: Any,
                  console: Any = None) -> Any:
    """The training split as an ``avgen.ExemplarBank``: time-averaged representations [M, D], waves [M, T]
    and each clip's id and class (from the cache, or the dataset)."""
    from avgen._core.components import ExemplarBank
    from avgen._core.retrieval import time_average

    train, names = _featurized_training_split(recipe, run_dir, device, encoder, representation, console)
    entries = [{"clip": c.id, "class": names[c.label] if c.label >= 0 else None} for c in train.clips]
    return ExemplarBank(time_average(train.rep), train.wave, entries, source=f"training split of {run_dir}")


def training_split(recipe: "Recipe", run_dir: Path, device: torch.device, encoder: Any, representation: Any,
                   console: Any = None) -> "SplitData":
    """The run's training split (from the cache, or the dataset)."""
    return _featurized_training_split(recipe, run_dir, device, encoder, representation, console)[0]


def _featurized_training_split(recipe: "Recipe", run_dir: Path, device: torch.device, encoder: Any,
                               representation: Any, console: Any = None) -> tuple["SplitData", list[str]]:
    """(the run's training split, the dataset's class names), from the cache or the dataset.

    The dataset is read where the run found it (its recorded absolute paths); a missing one is an
    error, never written anew.
    """
    from avgen._core.build import build_dataset
    from avgen._core.cache import FeatureCache
    from avgen._core.console import make_console
    from avgen._core.featurize import Featurizer
    from avgen._core.recipe import path_params

    recipe = recipe.with_absolute_paths()
    for name, path in path_params("dataset", recipe.data).items():
        if not path.exists():
            raise AvgenError(f"--exemplar needs the training clips of {run_dir}: data.{name} '{path}' is missing; "
                             "put the dataset back there, or use --raw")
    featurizer = Featurizer(recipe, build_dataset(recipe), encoder, representation, device,
                            console if console is not None else make_console(stderr=True), FeatureCache(),
                            stage_lines=False)  # the run's featurize lines are not generate's
    train, _ = featurizer.featurize_split("train")
    return train, featurizer.dataset.class_names


def window_starts(duration: float, window: float, hop: float) -> list[float]:
    """Starts of windows of length ``window`` every ``hop`` seconds covering [0, duration]."""
    if duration <= window:
        return [0.0]
    count = int(torch.ceil(torch.tensor((duration - window) / hop)).item()) + 1
    return [i * hop for i in range(count)]


SEGMENT_SECONDS = 30.0  # long videos are generated this many seconds of windows at a time (flat memory)
DECODE_OVERLAP_SECONDS = 1.0  # ... and their representations decoded in segments that overlap by this much


class OverlapAdd:
    """Streaming ``crossfade_windows``: Hann-weighted pieces [..., L] added at increasing offsets along the last
    axis and handed out (normalised by the summed weights) as soon as no later piece can reach them.

    It makes the same sums in the same order as one pass over all pieces, so the result is identical;
    only the part not yet handed out is held in memory.
    """

    def __init__(self, length: int, total: int) -> None:
        self.length, self.total = int(length), int(total)
        self.weight = torch.hann_window(self.length, periodic=False, dtype=torch.float64).clamp_min(1e-3)
        self.out: torch.Tensor | None = None
        self.norm = torch.zeros(0, dtype=torch.float64)
        self.offset = 0  # the global index of the buffers' first element

    def _grow(self, lead: tuple[int, ...], end: int) -> None:
        if self.out is None:
            self.out = torch.zeros(*lead, 0, dtype=torch.float64)
        missing = end - self.offset - self.norm.shape[0]
        if missing > 0:
            self.out = torch.cat([self.out, self.out.new_zeros(*self.out.shape[:-1], missing)], dim=-1)
            self.norm = torch.cat([self.norm, self.norm.new_zeros(missing)])

    def add(self, pieces: torch.Tensor, starts: list[int]) -> None:
        """Pieces [W, ..., L] at global offsets ``starts`` (not before what was already handed out)."""
        if not starts:
            return
        if starts[0] < self.offset:
            raise ValueError(f"piece at {starts[0]} is before {self.offset}, which was already handed out")
        self._grow(tuple(pieces.shape[1:-1]), max(starts) + self.length)
        for piece, start in zip(pieces.double(), starts):
            at = start - self.offset
            self.out[..., at:at + self.length] += piece * self.weight
            self.norm[at:at + self.length] += self.weight

    def pop(self, upto: int) -> torch.Tensor:
        """The finished signal from the last ``pop`` to ``upto`` (at most ``total``), as float32."""
        upto = min(int(upto), self.total)
        count = max(0, upto - self.offset)
        if self.out is None:
            raise ValueError("nothing was added")
        self._grow(tuple(self.out.shape[:-1]), upto)
        done = (self.out[..., :count] / self.norm[:count].clamp_min(1e-8)).float()
        self.out, self.norm = self.out[..., count:].clone(), self.norm[count:].clone()
        self.offset += count
        return done


def crossfade_windows(pieces: torch.Tensor, starts: list[int], total: int) -> torch.Tensor:
    """Windows [W, ..., L] cross-faded into one signal [..., total]: each placed at its offset along the
    last axis, Hann-weighted and normalised by the summed weights. For waveforms (samples) and
    representations (frames); not the STFT's overlap-add of frames, which lives in the audio plugin."""
    merged = OverlapAdd(pieces.shape[-1], total)
    merged.add(pieces, starts)
    return merged.pop(total)


class SegmentDecoder:
    """Decodes a representation [D, F] that arrives a block of frames at a time, ``segment`` frames at a time.

    Consecutive segments overlap by ``overlap`` frames and their sounds cross-fade (raised cosine) over the
    middle half of the overlap, away from each decode's edges. With ``continues`` each segment's decode is
    given the previous segment's sound over the overlap, so (for Griffin-Lim) its phase starts from it and
    the two agree where they cross-fade instead of cancelling. A representation of at most
    segment + overlap frames is decoded in one piece, exactly as ``decode`` would.
    """

    def __init__(self, decode_fn: Any, hop: int, total: int, frames: int, segment: int, overlap: int,
                 continues: bool = False) -> None:
        self.decode_fn, self.hop, self.total, self.frames = decode_fn, int(hop), int(total), int(frames)
        self.continues = continues  # decode_fn(rep, length, prefix) continues the sound prefix [1, T'] (else None)
        self.prefix: torch.Tensor | None = None
        self.segment, self.overlap = max(1, int(segment)), max(2, int(overlap))
        self.pending: list[torch.Tensor] = []
        self.have = 0  # frames received
        self.index = 0  # next segment
        self.tail: torch.Tensor | None = None  # the previous segment's sound from where the next fade starts
        self.emitted = 0  # global samples handed out
        self.margin = (self.overlap - 1) * self.hop // 4  # the fade keeps this far from both decodes' edges
        self.done = False

    def _bounds(self, j: int) -> tuple[int, int, bool]:
        first = j * self.segment
        last = first + self.segment + self.overlap
        return first, min(last, self.frames), last >= self.frames

    def push(self, block: torch.Tensor) -> list[torch.Tensor]:
        """Take frames [D, n] (in order); return the sound now final (possibly nothing)."""
        if block.shape[-1]:
            self.pending.append(block)
            self.have += block.shape[-1]
        out: list[torch.Tensor] = []
        while not self.done:
            first, last, final = self._bounds(self.index)
            if self.have < last:
                break
            out.extend(self._decode_segment(first, last, final))
            self.done = final
        return out

    def _decode_segment(self, first: int, last: int, final: bool) -> list[torch.Tensor]:
        held = torch.cat(self.pending, dim=-1)
        base = self.have - held.shape[-1]  # global frame of held[..., 0]
        start = first * self.hop  # global sample of the decoded sound's first sample
        length = self.total - start if final else (last - first - 1) * self.hop
        wave = self.decode_fn(held[..., first - base:last - base][None], length, self.prefix)[0]
        self.pending = [] if final else [held[..., first + self.segment - base:]]
        self.index += 1
        pieces = []
        if self.tail is not None:  # cross-fade with the previous segment's tail
            blend = self.tail.shape[-1] - self.margin
            at = self.emitted - start
            fade = 0.5 - 0.5 * torch.cos(torch.linspace(0, torch.pi, blend + 2, dtype=torch.float64)[1:-1])
            pieces.append((self.tail[:blend].double() * (1 - fade) + wave[at:at + blend].double() * fade).to(wave.dtype))
            self.emitted += blend
            self.tail = None
        cut = self.total if final else (first + self.segment) * self.hop + self.margin  # where the next fade starts
        pieces.append(wave[self.emitted - start:cut - start])
        if not final:
            self.tail = wave[cut - start:]
            self.prefix = wave[None, self.segment * self.hop:] if self.continues else None
        self.emitted = cut
        return pieces

    def finish(self) -> list[torch.Tensor]:
        """The rest of the sound once every frame was pushed."""
        if self.have < self.frames:
            raise ValueError(f"got {self.have} of {self.frames} frames")
        return self.push(torch.zeros(0))


def encoder_precision(meta: dict[str, Any], device: torch.device) -> str:
    """'bf16' when the run's features were made in bf16 and this device has native bf16, else 'fp32'."""
    if meta.get("featurize_precision") != "bf16":
        return "fp32"
    from avgen._core.precision import native_bf16

    return "bf16" if native_bf16(device)[0] else "fp32"


def return_freed_memory(threshold: int = 1 << 20) -> bool:
    """Make glibc's malloc give large blocks (>= ``threshold`` bytes) back to the system when freed.

    glibc raises its mmap threshold each time a large block is freed, so later tensors of that size come
    from the heap, which fragments across segments and threads: the peak memory of a long video then
    crept up segment after segment (94 MB more at 3 min than at 30 s). A fixed threshold keeps it flat.
    Returns whether it applied (glibc only).
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, int(threshold)))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def video_features(encoder: Any, video: Path, duration: float, chunk_seconds: float = 2.0, first: int = 0,
                   count: int | None = None, reader: Any = None, precision: str = "fp32") -> torch.Tensor:
    """Encoder features [count, dim] of frames first .. first + count - 1 at the encoder's fps (frame k shows
    time k / fps), decoded ``chunk_seconds`` at a time; by default every frame of ``duration`` seconds.

    ``reader`` (an ``avgen._core.media.FrameReader`` at the encoder's fps and size) carries on decoding where the
    previous call stopped; without it one is opened for this call. ``precision`` 'bf16' encodes under
    bfloat16 autocast (as the run's featurize did, ``avgen._core.precision``). Decoding and encoding take turns:
    decoding the next chunk in a thread while the encoder ran was no faster on 2 cores (80 frames of 720p
    at 8 fps: 1.64 s against 1.60 s; FFmpeg's own frame threads already use both cores while decoding).
    """
    from avgen._core.media import FrameReader
    from avgen._core.precision import autocast_for

    if count is None:
        count = max(1, round(duration * encoder.fps))
    own = reader is None
    reader = FrameReader(video, encoder.fps, encoder.input_size) if own else reader
    per_read = max(1, round(chunk_seconds * encoder.fps))
    feats = []
    try:
        for done in range(0, count, per_read):
            frames = reader.read(first + done, min(per_read, count - done))
            with autocast_for(precision, getattr(encoder, "device", torch.device("cpu"))):
                feats.append(encoder.encode(frames).float())
    finally:
        if own:
            reader.close()
    return torch.cat(feats)


def generate_for_video(video: Path, recipe: Any, encoder: Any, representation: Any, model: torch.nn.Module,
                       meta: dict[str, Any], device: torch.device, hop_fraction: float = 0.5,
                       batch: int = 32, exemplar_bank: Any = None, material: int | None = None,
                       segment_seconds: float = SEGMENT_SECONDS, features: torch.Tensor | None = None,
                       ) -> tuple[torch.Tensor, dict[str, Any]]:
    """The sound [T] of a whole video: sliding clip-length windows, generated and overlap-added
    (``VideoSound``), gathered in memory and scaled into [-1, 1]. ``write_video_sound`` streams to a file.

    With an ``avgen.ExemplarBank`` each window takes its nearest bank clip (paper Eq. 8) instead of
    the raw sound, and the summary's ``provenance`` records which clip and how similar. ``material``
    (a class index) forces the generator's class (``Generator.class_outputs``). ``features`` are the video's
    ``video_features`` when the caller has them already (several models on one encoder).
    """
    job = VideoSound(video, recipe, encoder, representation, model, meta, device, hop_fraction=hop_fraction,
                     batch=batch, exemplar_bank=exemplar_bank, material=material, segment_seconds=segment_seconds,
                     features=features)
    return within_unit(torch.cat(list(job.blocks()))), job.summary


def within_unit(wave: torch.Tensor) -> torch.Tensor:
    """``wave`` scaled into [-1, 1] when its peak exceeds it (for PCM), else unchanged."""
    peak = float(wave.abs().max()) if wave.numel() else 0.0
    return wave / peak if peak > 1.0 else wave


def write_video_sound(job: "VideoSound", path: Path, progress: Any = None) -> Path:
    """Stream a ``VideoSound`` into a 16-bit wav at ``path`` (atomically) in memory that does not grow with
    the video's length: blocks go to a float scratch file, then are copied, scaled into [-1, 1] if they exceed it.

    Both files are written with Python file writes, so a full disk is an ``OSError`` that ``atomic_path``
    turns into one line, keeping any earlier file at ``path``."""
    import struct

    import numpy as np

    from avgen._core.atomic import TEMP_SUFFIX, atomic_path

    rate = job.summary["sample_rate"]
    path = Path(path)
    peak, samples = 0.0, 0
    with atomic_path(path) as final:
        scratch = final.with_name(final.name.removesuffix(TEMP_SUFFIX) + ".float" + TEMP_SUFFIX)  # a temporary file too
        try:
            with open(scratch, "wb") as raw:
                for block in job.blocks(progress):
                    data = block.numpy().astype("<f4", copy=False)
                    peak = max(peak, float(np.abs(data).max()) if data.size else 0.0)
                    samples += data.size
                    raw.write(data.tobytes())
            scale = 1.0 / peak if peak > 1.0 else 1.0
            with open(scratch, "rb") as raw, open(final, "wb") as out:
                out.write(struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + 2 * samples, b"WAVE", b"fmt ", 16, 1, 1,
                                      rate, 2 * rate, 2, 16, b"data", 2 * samples))
                while chunk := raw.read(4 * rate * 10):
                    data = np.frombuffer(chunk, dtype="<f4") * scale
                    out.write(np.rint(np.clip(data, -1.0, 1.0) * 32767).astype("<i2").tobytes())
        finally:
            scratch.unlink(missing_ok=True)
    return path


class VideoSound:
    """The generated sound of one video, produced ``segment_seconds`` of windows at a time.

    Windows of the training clip length start every ``hop_fraction`` of a clip (for representations whose
    frames tile time, on a frame boundary). Each run of windows reads only the frames it needs, predicts,
    and adds to an ``OverlapAdd``: the merged representation (then decoded by a ``SegmentDecoder``), or
    the sound of each window (exemplars, or representations without frame hop). ``blocks`` yields the
    sound in order; ``summary`` is complete once it is exhausted. Memory does not grow with the video.
    """

    def __init__(self, video: Path, recipe: Any, encoder: Any, representation: Any, model: torch.nn.Module,
                 meta: dict[str, Any], device: torch.device, hop_fraction: float = 0.5, batch: int = 32,
                 exemplar_bank: Any = None, material: int | None = None,
                 segment_seconds: float = SEGMENT_SECONDS, features: torch.Tensor | None = None) -> None:
        from avgen._core.media import probe

        info = probe(video)
        if not info.has_video:
            raise AvgenError(f"{video}: has no video stream; avgen generate needs a video")
        self.video, self.recipe, self.encoder, self.representation = Path(video), recipe, encoder, representation
        self.model, self.device, self.batch, self.bank, self.material = model, device, batch, exemplar_bank, material
        self.clip = clip_seconds(recipe, meta)
        self.rate = int(meta.get("sample_rate") or representation.sample_rate)
        self.duration = float(info.duration)
        if self.duration <= 0:
            raise AvgenError(f"{video}: zero-length video")
        self.samples, self.total = round(self.clip * self.rate), round(self.duration * self.rate)
        if exemplar_bank is not None and tuple(exemplar_bank.waves.shape[1:]) != (self.samples,):
            raise AvgenError(f"exemplar bank ({exemplar_bank.source}): clips of {exemplar_bank.waves.shape[-1]} samples, "
                             f"the model's are {self.samples} ({self.clip} s at {self.rate} Hz)")
        self.frame_hop = representation.frame_hop if exemplar_bank is None else None
        # window hop in representation frames (0 without frame hop)
        self.step = max(1, round(self.clip * hop_fraction * self.rate / self.frame_hop)) if self.frame_hop else 0
        hop = self.step * self.frame_hop / self.rate if self.frame_hop else self.clip * hop_fraction
        self.starts = window_starts(self.duration, self.clip, hop)
        self.per_run = max(1, round(segment_seconds / hop))  # windows generated together
        self.segment_seconds = segment_seconds
        self.frames_per_clip = max(1, round(self.clip * encoder.fps))
        self.video_frames = max(1, round(max(self.duration, self.clip) * encoder.fps))
        self.names = list(meta.get("class_names") or [])
        self.features = features  # [frames, dim] of the whole video, when given: not read again
        self.precision = encoder_precision(meta, device)
        self.clock = _Clock()
        self.summary: dict[str, Any] = {"video": str(video), "seconds": self.duration, "windows": len(self.starts),
                                        "sample_rate": self.rate, "encoder_precision": self.precision}

    def _first_frame(self, start: float) -> int:
        return min(round(start * self.encoder.fps), max(self.video_frames, self.frames_per_clip) - self.frames_per_clip)

    def _window_features(self, indices: range) -> torch.Tensor:
        """Features [W, frames_per_clip, dim] of the windows ``indices``, from only the frames they cover."""
        firsts = [self._first_frame(self.starts[i]) for i in indices]
        if self.features is not None:
            features = fit_frames(self.features, max(self.video_frames, self.frames_per_clip))
            return torch.stack([features[f:f + self.frames_per_clip] for f in firsts])
        if self.video_frames < self.frames_per_clip:  # a video shorter than one clip: pad with its last frame
            features = fit_frames(video_features(self.encoder, self.video, self.duration, count=self.video_frames,
                                                 reader=self.reader, precision=self.precision), self.frames_per_clip)
            low = 0
        else:
            low = min(firsts)
            features = video_features(self.encoder, self.video, self.duration, first=low,
                                      count=max(firsts) + self.frames_per_clip - low, reader=self.reader,
                                      precision=self.precision)
        return torch.stack([features[f - low:f - low + self.frames_per_clip] for f in firsts])

    def blocks(self, progress: Any = None) -> Iterator[torch.Tensor]:
        """The sound [n] in consecutive blocks; ``progress`` (a (rich Progress, task) pair) advances per window."""
        from avgen._core.media import FrameReader

        phase = raw_phase(self.recipe, self.representation)
        decoder = None
        if self.frame_hop:  # windows' frames merge into one representation, decoded in long segments
            frames = self.representation.frames(self.total)
            merged = OverlapAdd(self.representation.frames(self.samples), frames)
            decoder = SegmentDecoder(
                lambda rep, length, prefix: decode(self.representation, rep, phase, length, self.device, reference=prefix),
                self.frame_hop, self.total, frames, round(self.segment_seconds * self.rate / self.frame_hop),
                round(DECODE_OVERLAP_SECONDS * self.rate / self.frame_hop),
                continues=bool(getattr(self.representation, "continues_phase", False)))
        else:  # each window's sound, overlap-added
            merged = OverlapAdd(self.samples, self.total)
        self.probability_sum, provenance = None, []
        self.reader = FrameReader(self.video, self.encoder.fps, self.encoder.input_size)
        try:
            yield from self._runs(merged, decoder, phase, provenance, progress)
        finally:
            self.reader.close()
        self._finish_summary(provenance)

    def _runs(self, merged: "OverlapAdd", decoder: "SegmentDecoder | None", phase: str,
              provenance: list[dict[str, Any]], progress: Any) -> Iterator[torch.Tensor]:
        """Each run of ``per_run`` windows: features, generator, then its finished sound."""
        from avgen._core.retrieval import build_index, search, time_average

        index = build_index(self.recipe.index, self.bank.reps) if self.bank is not None else None  # the recipe's [index]
        clock, starts = self.clock, self.starts
        for lo in range(0, len(starts), self.per_run):
            indices = range(lo, min(lo + self.per_run, len(starts)))
            windows = self._window_features(indices)
            clock.lap("features")
            labels = None if self.material is None else torch.full((len(indices),), int(self.material), dtype=torch.long)
            outputs = predict(self.model, windows, self.device, batch=self.batch, labels=labels)
            clock.lap("generator")
            probabilities = self.model.class_probabilities(outputs)
            if probabilities is not None:
                part = probabilities.double().sum(0)
                self.probability_sum = part if self.probability_sum is None else self.probability_sum + part
            ahead = indices.stop < len(starts)  # later windows still reach back before their start
            until = round(starts[indices.stop] * self.rate) if ahead else self.total  # where the sound is final
            if self.bank is not None:  # the nearest bank clip of each window (paper Eq. 8)
                scores, nearest = search(index, time_average(outputs["rep"]), 1)
                clock.lap("exemplar")
                merged.add(self.bank.waves[nearest[:, 0]].float(), [round(starts[i] * self.rate) for i in indices])
                provenance.extend(
                    {"start": round(starts[i], 4), "end": round(min(starts[i] + self.clip, self.duration), 4),
                     **self.bank.entries[int(j)], "similarity": round(float(score), 6)}
                    for i, j, score in zip(indices, nearest[:, 0], scores[:, 0]))
                out = [merged.pop(until)]
            elif self.frame_hop:
                merged.add(outputs["rep"], [i * self.step for i in indices])
                block = merged.pop(indices.stop * self.step if ahead else decoder.frames)
                clock.lap("mix")
                out = decoder.push(block) + ([] if ahead else decoder.finish())
            else:  # a representation without frame hop: decode each window, overlap-add the sound
                pieces = decode(self.representation, outputs["rep"], phase, self.samples, self.device)
                merged.add(pieces, [round(starts[i] * self.rate) for i in indices])
                out = [merged.pop(until)]
            clock.lap("decode")
            if progress is not None:
                progress[0].advance(progress[1], len(indices))
            yield from (piece for piece in out if piece.numel())

    def _finish_summary(self, provenance: list[dict[str, Any]]) -> None:
        summary = self.summary
        summary["timings"] = self.clock.laps
        if self.probability_sum is not None and self.names:
            mean = (self.probability_sum / len(self.starts)).float()
            top = mean.topk(min(3, len(self.names)))
            summary["classes"] = {self.names[int(i)]: round(float(p), 4) for p, i in zip(top.values, top.indices)}
            summary["predicted"] = self.names[int(top.indices[0])]
        if self.material is not None:
            summary["material"] = self.names[self.material] if self.names else self.material
        if self.bank is not None:
            summary["exemplars"] = self.bank.source
            summary["provenance"] = provenance


class _Clock:
    """Seconds spent in each named phase, in order (``laps``), summed over repeats."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(self.laps.get(name, 0.0) + now - self._last, 4)
        self._last = now
