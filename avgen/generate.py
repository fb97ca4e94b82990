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


def predict(model: torch.nn.Module, features: torch.Tensor, device: torch.device, batch: int = 256) -> dict[str, torch.Tensor]:
    """Run a generator over features [N, frames, dim] in batches; outputs on the CPU."""
    model.eval()
    outs: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for i in range(0, features.shape[0], batch):
            for key, value in model(features[i:i + batch].to(device)).items():
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
    _, retrieved = topk_cosine(time_average(reps), time_average(train.rep), k)
    exemplar = train.wave[retrieved[:, 0]]
    probabilities = model.class_probabilities(outputs)
    predicted = probabilities.argmax(-1) if probabilities is not None else None

    out_dir = run_dir / "generated"
    tensors = {"rep": reps, "raw": raw, "exemplar": exemplar, "retrieved": retrieved}
    if predicted is not None:
        tensors["predicted"] = predicted
    with atomic_path(run_dir / OUTPUTS) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    names = class_names
    examples = [c.id for c in test.clips[: recipe.eval.examples]]
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
            "exemplar_id": train.clips[int(retrieved[i, 0])].id,
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


def load_trained(run_dir: Path, device: torch.device) -> tuple[Any, Any, Any, torch.nn.Module, dict[str, Any]]:
    """(recipe, encoder, representation, generator, meta) rebuilt from a run directory alone."""
    from avgen.build import build_encoder, build_generator, build_representation
    from avgen.checkpoint import load_run_checkpoint
    from avgen.components import GeneratorShape
    from avgen.recipe import validate_recipe

    run_dir = Path(run_dir)
    ckpt, state, meta = load_run_checkpoint(run_dir)
    recipe = validate_recipe(meta["recipe"], run_dir / "recipe.toml")
    if recipe.encoder is None or recipe.representation is None or recipe.generator is None:
        raise AvgenError(f"{run_dir}: the run's recipe has no encoder, representation or generator")
    encoder = build_encoder(recipe, device)
    representation = build_representation(recipe, device)
    model = build_generator(recipe, GeneratorShape(**meta["shape"]))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise AvgenError(f"{ckpt}: its weights do not fit {recipe.generator.name} ({first}); retrain with avgen run RECIPE --fresh") from exc
    return recipe, encoder, representation, model.to(device).eval(), meta


def exemplar_bank(recipe: "Recipe", run_dir: Path, device: torch.device, encoder: Any, representation: Any,
                  console: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Time-averaged training representations [M, D] and training waves [M, T] (from the cache, or the dataset)."""
    from avgen.retrieval import time_average

    train = training_split(recipe, run_dir, device, encoder, representation, console)
    return time_average(train.rep), train.wave


def training_split(recipe: "Recipe", run_dir: Path, device: torch.device, encoder: Any, representation: Any,
                   console: Any = None) -> "SplitData":
    """The run's training split (from the cache, or the dataset).

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
    return train


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
                       batch: int = 32, exemplar_bank: tuple[torch.Tensor, torch.Tensor] | None = None,
                       ) -> tuple[torch.Tensor, dict[str, Any]]:
    """The sound for a whole video: sliding clip-length windows, generated and overlap-added.

    With ``exemplar_bank`` = (time-averaged training representations [M, D], training waves
    [M, T]) each window takes its exemplar sound instead of the raw sound.
    """
    from avgen.media import probe

    info = probe(video)
    if not info.has_video:
        raise AvgenError(f"{video}: has no video stream; avgen generate needs a video")
    clip = float(meta.get("clip_seconds") or recipe.data.params.get("clip_seconds", 0.5))
    rate = int(meta.get("sample_rate") or representation.sample_rate)
    duration = float(info.duration)
    if duration <= 0:
        raise AvgenError(f"{video}: zero-length video")
    samples, total = round(clip * rate), round(duration * rate)
    frame_hop = representation.frame_hop if exemplar_bank is None else None
    step = max(1, round(clip * hop_fraction * rate / frame_hop)) if frame_hop else 0  # window hop in rep frames
    hop = step * frame_hop / rate if frame_hop else clip * hop_fraction
    starts = window_starts(duration, clip, hop)
    clock = _Clock()
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
    outputs = predict(model, windows_t, device, batch=batch)
    clock.lap("generator")
    if exemplar_bank is not None:  # the nearest training clip of each window (paper Eq. 8)
        from avgen.retrieval import time_average, topk_cosine

        bank_reps, bank_waves = exemplar_bank
        _, nearest = topk_cosine(time_average(outputs["rep"]), bank_reps, 1)
        clock.lap("exemplar")
        wave = crossfade_windows(bank_waves[nearest[:, 0]], [round(s * rate) for s in starts], total)
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
