"""The generate stage: raw sound (decode of s') and exemplar sound (paper Eq. 8) per test clip."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from avgen.atomic import atomic_path, write_json
from avgen.build import raw_phase
from avgen.errors import AvgenError
from avgen.media import fit_frames

if TYPE_CHECKING:
    from avgen.featurize import SplitData
    from avgen.recipe import Recipe

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
           batch: int = 64) -> torch.Tensor:
    """Waveforms [N, length] from representations [N, D, F]."""
    waves = []
    with torch.no_grad():
        for i in range(0, reps.shape[0], batch):
            wave = representation.decode(reps[i:i + batch].to(device), phase=phase, length=length)
            waves.append(wave.float().cpu())
    return torch.cat(waves) if waves else torch.zeros(0, length)


def generate_split(*, recipe: "Recipe", run_dir: Path, model: torch.nn.Module, test: "SplitData", train: "SplitData",
                   representation: Any, class_names: list[str], sample_rate: int, device: torch.device,
                   console: Any) -> dict[str, Any]:
    """Load the best checkpoint into ``model``; write raw and exemplar wavs, the index and the tensors the metrics read."""
    from avgen.checkpoint import load_checkpoint
    from avgen.media import write_wav
    from avgen.retrieval import time_average, topk_cosine

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
    _, retrieved = topk_cosine(queries, time_average(train.rep), k)
    exemplar, from_library = train.wave[retrieved[:, 0]], None
    if recipe.eval.library is not None:  # exemplar sounds from the user's library; R@K keeps the training clips
        spec = recipe.representation
        bank = library_bank(recipe.eval.library, representation, {"name": spec.name, **spec.params},
                            length / sample_rate, console)
        scores, nearest = topk_cosine(queries, bank.reps, 1)
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
    from avgen.report import pick_examples

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
            "retrieved": [train.clips[int(j)].id for j in retrieved[i]],
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


GENERATION_SECTIONS = ("generator", "representation", "eval")  # what `avgen generate --set` may change


def load_trained(run_dir: Path, device: torch.device, overrides: tuple[str, ...] | list[str] = (),
                 ) -> tuple[Any, Any, Any, torch.nn.Module, dict[str, Any]]:
    """(recipe, encoder, representation, generator, meta) rebuilt from a run directory alone.

    ``overrides`` (``key.path=value``, as ``avgen run --set``) change generation settings of the
    run's recipe, e.g. a sampler's steps; a change the trained weights do not fit is an error.
    """
    from avgen.checkpoint import load_run_checkpoint
    from avgen.components import SavedModel

    run_dir = Path(run_dir)
    ckpt, state, meta = load_run_checkpoint(run_dir)
    return build_saved(SavedModel(state, meta), run_dir / "recipe.toml", ckpt, device, overrides)


def build_saved(saved: Any, recipe_source: Path, weights_source: Path, device: torch.device,
                overrides: tuple[str, ...] | list[str] = (),
                ) -> tuple[Any, Any, Any, torch.nn.Module, dict[str, Any]]:
    """(recipe, encoder, representation, generator, meta) rebuilt from an ``avgen.SavedModel`` (weights and meta),
    with ``overrides`` applied to its recipe's generation settings."""
    import copy

    from avgen.build import build_encoder, build_generator, build_representation
    from avgen.components import GeneratorShape
    from avgen.recipe import apply_override, validate_recipe

    meta = saved.meta
    if not isinstance(meta.get("recipe"), dict) or not isinstance(meta.get("shape"), dict):
        raise AvgenError(f"{recipe_source}: carries no recipe/shape; it was not written by avgen")
    raw = copy.deepcopy(meta["recipe"])
    for item in overrides:
        if item.split("=", 1)[0].strip().split(".", 1)[0] not in GENERATION_SECTIONS:
            raise AvgenError(f"--set {item!r}: generate can change only {', '.join(GENERATION_SECTIONS)} settings, "
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
    from avgen.plugins import first_answer

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
    from avgen.checkpoint import load_run_checkpoint
    from avgen.components import SavedModel

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
    from avgen.plugins import first_answer

    path = Path(path)
    if not path.is_dir():
        raise AvgenError(f"--library {path}: not a folder; give a folder of wav/flac/ogg/mp3 files")
    bank = first_answer("open_library", path=path, representation=representation,
                        representation_spec=representation_spec, clip_seconds=seconds, console=console)
    if bank is None:
        raise AvgenError(f"--library {path}: no installed plugin indexes sound folders (avgen's share plugin does)")
    return bank


def select_bank(*, exemplar: bool, library: Path | None, run_dir: Path | None, model_bank: Any, recipe: Any,
                encoder: Any, representation: Any, meta: dict[str, Any], device: torch.device, console: Any) -> Any:
    """The exemplar bank ``avgen generate`` picks from: the library, else (with --exemplar) the run's training
    split or the bank exported with the model; None for raw sound."""
    if library is not None:
        return library_bank(library, representation, dict(meta["recipe"]["representation"]), clip_seconds(recipe, meta),
                            console)
    if not exemplar:
        return None
    if run_dir is not None:
        return exemplar_bank(recipe, run_dir, device, encoder, representation, console=console)
    if model_bank is None:
        raise AvgenError("--exemplar: this model folder was exported without exemplar sounds; "
                         "give --library SFX_DIR, or use --raw")
    return model_bank


def material_class(name: str, meta: dict[str, Any]) -> int:
    """The class index of ``--material NAME`` among the model's classes."""
    names = list(meta.get("class_names") or [])
    if name not in names:
        listed = ", ".join(names) if names else "none"
        raise AvgenError(f"--material {name!r} is not a class of this model; its classes: {listed}")
    return names.index(name)


def clip_seconds(recipe: Any, meta: dict[str, Any]) -> float:
    """The length of the clips the model was trained on."""
    return float(meta.get("clip_seconds") or recipe.data.params.get("clip_seconds", 0.5))


def exemplar_bank(recipe: "Recipe", run_dir: Path, device: torch.device, encoder: Any, representation: Any,
                  console: Any = None) -> Any:
    """The training split as an ``avgen.ExemplarBank``: time-averaged representations [M, D], waves [M, T]
    and each clip's id and class (from the cache, or the dataset)."""
    from avgen.components import ExemplarBank
    from avgen.retrieval import time_average

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
    from rich.console import Console

    from avgen.build import build_dataset
    from avgen.cache import FeatureCache
    from avgen.featurize import Featurizer
    from avgen.recipe import path_params

    recipe = recipe.with_absolute_paths()
    for name, path in path_params("dataset", recipe.data).items():
        if not path.exists():
            raise AvgenError(f"--exemplar needs the training clips of {run_dir}: data.{name} '{path}' is missing; "
                             "put the dataset back there, or use --raw")
    featurizer = Featurizer(recipe, build_dataset(recipe), encoder, representation, device,
                            console if console is not None else Console(stderr=True), FeatureCache())
    train, _ = featurizer.featurize_split("train")
    return train, featurizer.dataset.class_names


def window_starts(duration: float, window: float, hop: float) -> list[float]:
    """Starts of windows of length ``window`` every ``hop`` seconds covering [0, duration]."""
    if duration <= window:
        return [0.0]
    count = int(torch.ceil(torch.tensor((duration - window) / hop)).item()) + 1
    return [i * hop for i in range(count)]


def crossfade_windows(pieces: torch.Tensor, starts: list[int], total: int) -> torch.Tensor:
    """Windows [W, ..., L] cross-faded into one signal [..., total]: each placed at its offset along the
    last axis, Hann-weighted and normalised by the summed weights. For waveforms (samples) and
    representations (frames); not the STFT's overlap-add of frames, which lives in the audio plugin."""
    length = pieces.shape[-1]
    weight = torch.hann_window(length, periodic=False, dtype=torch.float64).clamp_min(1e-3)
    out = torch.zeros(*pieces.shape[1:-1], max(total, starts[-1] + length), dtype=torch.float64)
    norm = torch.zeros(out.shape[-1], dtype=torch.float64)
    for piece, start in zip(pieces.double(), starts):
        out[..., start:start + length] += piece * weight
        norm[start:start + length] += weight
    return (out / norm.clamp_min(1e-8))[..., :total].float()


def video_features(encoder: Any, video: Path, duration: float, chunk_seconds: float = 8.0) -> torch.Tensor:
    """Encoder features of every frame at the encoder's fps, decoded in chunks (long videos stream)."""
    from avgen.media import read_frames

    feats = []
    start = 0.0
    total = max(1, round(duration * encoder.fps))
    while len(feats) == 0 or sum(f.shape[0] for f in feats) < total:
        length = min(chunk_seconds, max(duration - start, 1.0 / encoder.fps))
        frames = read_frames(video, encoder.fps, encoder.input_size, start=start, duration=length)
        feats.append(encoder.encode(frames).float())
        start += length
        if start >= duration:
            break
    return fit_frames(torch.cat(feats), total)


def generate_for_video(video: Path, recipe: Any, encoder: Any, representation: Any, model: torch.nn.Module,
                       meta: dict[str, Any], device: torch.device, hop_fraction: float = 0.5,
                       batch: int = 32, exemplar_bank: Any = None, material: int | None = None,
                       features: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """The sound for a whole video: sliding clip-length windows, generated and overlap-added.

    With an ``avgen.ExemplarBank`` each window takes its nearest bank clip (paper Eq. 8) instead of
    the raw sound, and the summary's ``windows`` record which clip and how similar. ``material``
    (a class index) forces the generator's class (``Generator.class_outputs``). ``features`` are the video's
    ``video_features`` when the caller has them already (several models on one encoder).
    """
    from avgen.media import probe

    info = probe(video)
    if not info.has_video:
        raise AvgenError(f"{video}: has no video stream; avgen generate needs a video")
    clip = clip_seconds(recipe, meta)
    rate = int(meta.get("sample_rate") or representation.sample_rate)
    duration = float(info.duration)
    if duration <= 0:
        raise AvgenError(f"{video}: zero-length video")
    samples, total = round(clip * rate), round(duration * rate)
    if exemplar_bank is not None and tuple(exemplar_bank.waves.shape[1:]) != (samples,):
        raise AvgenError(f"exemplar bank ({exemplar_bank.source}): clips of {exemplar_bank.waves.shape[-1]} samples, "
                         f"the model's are {samples} ({clip} s at {rate} Hz)")
    frame_hop = representation.frame_hop if exemplar_bank is None else None
    step = max(1, round(clip * hop_fraction * rate / frame_hop)) if frame_hop else 0  # window hop in rep frames
    hop = step * frame_hop / rate if frame_hop else clip * hop_fraction
    starts = window_starts(duration, clip, hop)
    clock = _Clock()
    if features is None:
        features = video_features(encoder, video, max(duration, clip))
    clock.lap("features")
    frames_per_clip = max(1, round(clip * encoder.fps))
    if features.shape[0] < frames_per_clip:
        features = fit_frames(features, frames_per_clip)
    windows = []
    for start in starts:
        first = min(round(start * encoder.fps), features.shape[0] - frames_per_clip)
        windows.append(features[first:first + frames_per_clip])
    windows_t = torch.stack(windows)
    labels = None if material is None else torch.full((len(starts),), int(material), dtype=torch.long)
    outputs = predict(model, windows_t, device, batch=batch, labels=labels)
    clock.lap("generator")
    if exemplar_bank is not None:  # the nearest training clip of each window (paper Eq. 8)
        from avgen.retrieval import time_average, topk_cosine

        scores, nearest = topk_cosine(time_average(outputs["rep"]), exemplar_bank.reps, 1)
        clock.lap("exemplar")
        wave = crossfade_windows(exemplar_bank.waves[nearest[:, 0]].float(), [round(s * rate) for s in starts], total)
    elif frame_hop:  # merge the windows' frames into one representation, then one decode with one phase
        merged = crossfade_windows(outputs["rep"], [i * step for i in range(len(starts))], representation.frames(total))
        clock.lap("mix")
        wave = decode(representation, merged[None], raw_phase(recipe, representation), total, device)[0]
    else:  # a representation without frame hop: decode each window and overlap-add the sound
        pieces = decode(representation, outputs["rep"], raw_phase(recipe, representation), samples, device)
        clock.lap("decode")
        wave = crossfade_windows(pieces, [round(s * rate) for s in starts], total)
    clock.lap("decode" if frame_hop else "mix")
    peak = float(wave.abs().max())
    if peak > 1.0:  # keep the waveform in [-1, 1] for PCM
        wave = wave / peak
    names = meta.get("class_names") or []
    summary: dict[str, Any] = {"video": str(video), "seconds": duration, "windows": len(starts), "sample_rate": rate,
                               "timings": clock.laps}
    probabilities = model.class_probabilities(outputs)
    if probabilities is not None and names:
        top = probabilities.mean(0).topk(min(3, len(names)))
        summary["classes"] = {names[int(i)]: round(float(p), 4) for p, i in zip(top.values, top.indices)}
        summary["predicted"] = names[int(top.indices[0])]
    if material is not None:
        summary["material"] = names[material] if names else material
    if exemplar_bank is not None:
        summary["exemplars"] = exemplar_bank.source
        summary["provenance"] = [{"start": round(s, 4), "end": round(min(s + clip, duration), 4),
                               **exemplar_bank.entries[int(j)], "similarity": round(float(score), 6)}
                              for s, j, score in zip(starts, nearest[:, 0], scores[:, 0])]
    return wave, summary


class _Clock:
    """Seconds spent in each named phase, in order (``laps``)."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._last, 4)
        self._last = now
