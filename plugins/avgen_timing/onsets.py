"""When each sound happens: the onsets file of ``avgen generate --onsets-out/--onsets`` and the sound placed by it.

``--onsets-out`` runs a registered ``detector`` over the video and writes its events (time,
confidence) with the generator's material for each (the class head's most probable class in
the window centred on the event). ``--onsets`` reads such a file, edited or not, and builds the
sound from it alone: per onset, the window of video centred on it is generated, its sound
(the exemplar: nearest training clip, of the onset's material when it names one; or the raw
decode) is cut at its attack and mixed in at the onset's time, lasting until the next onset. Nothing else
sounds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from avgen.atomic import write_json
from avgen.errors import AvgenError

FORMAT = "avgen-onsets"
VERSION = 1
CHUNK_SECONDS = 20.0  # a long video is read in chunks this long (plus MARGIN each side) for the detector
MARGIN_SECONDS = 1.0


class Onset(BaseModel):
    """One sound: when (seconds from the video's start), how sure, and what material."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # NaN would pass every bound check unnoticed

    time: float = Field(ge=0, description="seconds from the start of the video")
    confidence: float = Field(1.0, ge=0, le=1, description="the detector's confidence (1 for onsets added by hand)")
    material: str | None = Field(None, description="a class of the run; null: the generator decides")
    probability: float | None = Field(None, ge=0, le=1, description="the generator's probability of that material")


class OnsetsFile(BaseModel):
    """The whole file (docs/timing.md)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    format: str = FORMAT
    version: int = VERSION
    video: str | None = None
    duration: float | None = None
    detector: str | None = None
    materials: list[str] = Field(default_factory=list)
    onsets: list[Onset]


def read_onsets(path: Path, class_names: list[str], duration: float) -> list[Onset]:
    """The onsets of an onsets file, sorted by time; a bad file, time or material is one AvgenError line."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AvgenError(f"--onsets {path}: cannot read it ({exc.strerror or exc})") from exc
    except ValueError as exc:
        raise AvgenError(f"--onsets {path}: not JSON ({exc})") from exc
    try:
        parsed = OnsetsFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = first["msg"]
        if first["type"] == "finite_number":  # NaN (JSON allows it) or +-Infinity
            value = first.get("input")
            message = f"{value} is not a number" if value != value else f"{value} is not a finite number"
        raise AvgenError(f"--onsets {path}: {where}: {message} (format in docs/timing.md)") from exc
    if parsed.format != FORMAT:
        raise AvgenError(f"--onsets {path}: format is '{parsed.format}', expected '{FORMAT}'")
    for i, onset in enumerate(parsed.onsets):
        if onset.time > duration:
            raise AvgenError(f"--onsets {path}: onsets.{i}.time {onset.time:g} s is past the end of the video ({duration:g} s)")
        if onset.material is not None and onset.material not in class_names:
            raise AvgenError(f"--onsets {path}: onsets.{i}.material '{onset.material}' is not a class of the run; "
                             f"use one of {', '.join(class_names) or '(the run has no classes)'} or null")
    return sorted(parsed.onsets, key=lambda o: o.time)


def write_onsets(path: Path, onsets: list[Onset], video: Path, duration: float, detector: str,
                 class_names: list[str]) -> Path:
    """Write an onsets file (crash-safe)."""
    doc = OnsetsFile(video=str(video), duration=round(duration, 6), detector=detector, materials=list(class_names),
                     onsets=onsets)
    return write_json(Path(path), doc.model_dump())


def detect_events(detector: Any, video: Path, duration: float) -> torch.Tensor:
    """The detector's events [K, 2] (seconds, confidence) over a whole video, read in overlapping chunks."""
    from avgen.media import read_frames

    found = []
    start = 0.0
    while start < duration:
        lo, hi = max(0.0, start - MARGIN_SECONDS), min(duration, start + CHUNK_SECONDS + MARGIN_SECONDS)
        frames = read_frames(video, detector.fps, detector.input_size, start=lo, duration=max(hi - lo, 1.0 / detector.fps))
        events = detector.detect(frames).reshape(-1, 2).float()
        events[:, 0] += lo
        own = (events[:, 0] >= start) & (events[:, 0] < start + CHUNK_SECONDS)  # each chunk owns its middle
        found.append(events[own])
        start += CHUNK_SECONDS
    return torch.cat(found) if found else torch.zeros(0, 2)


def window_features(features: torch.Tensor, times: list[float], fps: float, frames_per_clip: int) -> torch.Tensor:
    """Feature windows [K, frames_per_clip, dim] centred on each time (clamped to the video)."""
    from avgen.media import fit_frames

    if features.shape[0] < frames_per_clip:
        features = fit_frames(features, frames_per_clip)
    firsts = window_starts(times, fps, frames_per_clip, features.shape[0])
    return torch.stack([features[f:f + frames_per_clip] for f in firsts]) if firsts else \
        features.new_zeros(0, frames_per_clip, features.shape[1])


def window_starts(times: list[float], fps: float, frames_per_clip: int, frames: int) -> list[int]:
    """The first frame of the clip-length window centred on each time, clamped inside ``frames`` frames."""
    return [min(max(0, round(t * fps - frames_per_clip / 2)), frames - frames_per_clip) for t in times]


def label_events(events: torch.Tensor, probabilities: torch.Tensor | None, class_names: list[str]) -> list[Onset]:
    """Onsets from events [K, 2] and the generator's class probabilities [K, C] of their windows (None: no class head)."""
    onsets = []
    for k, (time, confidence) in enumerate(events.tolist()):
        material, probability = None, None
        if probabilities is not None and class_names:
            p, j = probabilities[k].max(0)
            material, probability = class_names[int(j)], round(float(p), 4)
        onsets.append(Onset(time=round(time, 4), confidence=round(min(max(confidence, 0.0), 1.0), 4),
                            material=material, probability=probability))
    return onsets


def attack(wave: torch.Tensor, sample_rate: int, frame_seconds: float = 0.005) -> int:
    """Sample where a hit's sound attacks: the start of the frame (``frame_seconds`` long) before its loudest
    one; 0 for silence. A generated hit rises over tens of milliseconds (its spectrogram frames are ~10 ms
    and the phase is estimated), so its first audible sample is well before the hit itself."""
    x = wave.detach().float().reshape(-1)
    hop = max(1, round(frame_seconds * sample_rate))
    frames = x.numel() // hop
    if frames == 0 or not bool(x.abs().amax() > 0):
        return 0
    energy = x[: frames * hop].reshape(frames, hop).square().mean(1)
    return max(0, int(energy.argmax()) - 1) * hop


def mix_at(total: int, sounds: list[torch.Tensor], starts: list[int]) -> torch.Tensor:
    """Sounds [T_k] added into silence of ``total`` samples, each from its start sample (cut at the end)."""
    out = torch.zeros(total, dtype=torch.float64)
    for sound, start in zip(sounds, starts):
        if start >= total:
            continue
        piece = sound.double().reshape(-1)[: total - start]
        out[start:start + piece.numel()] += piece
    return out.float()


def place_sounds(onsets: list[Onset], pieces: list[torch.Tensor], sample_rate: int, total: int,
                 fade_seconds: float = 0.02, gap_seconds: float = 0.02) -> torch.Tensor:
    """Each piece cut at its attack (see ``attack``), faded in over 2 ms, mixed in at its onset's time, and ended
    (faded out over ``fade_seconds``) ``gap_seconds`` before the next onset, so every contact is heard as its own
    onset: a generated sound does not always decay, and one running into the next hides the next one's rise
    (on four real clips, 51 % of the placed sounds were found as onsets when each ran up to the next, all with
    the 20 ms gap)."""
    starts = [round(o.time * sample_rate) for o in onsets]
    order = sorted(range(len(onsets)), key=lambda k: starts[k])
    cut: list[torch.Tensor] = [torch.zeros(0)] * len(onsets)
    for rank, k in enumerate(order):
        piece = pieces[k].detach().float().reshape(-1)
        piece = piece[attack(piece, sample_rate):].clone()
        rise = min(piece.numel(), max(1, round(0.002 * sample_rate)))
        piece[:rise] *= torch.linspace(0, 1, rise)
        if rank + 1 < len(order):
            piece = piece[: max(0, starts[order[rank + 1]] - starts[k] - round(gap_seconds * sample_rate))]
            fall = min(piece.numel(), max(1, round(fade_seconds * sample_rate)))
            if fall:
                piece[piece.numel() - fall:] *= torch.linspace(1, 0, fall)
        cut[k] = piece
    return mix_at(total, cut, starts)


def nearest_of_material(queries: torch.Tensor, bank: torch.Tensor, labels: torch.Tensor, wanted: list[int | None]) -> list[int]:
    """Per query [K, D], the index of the nearest bank row [M, D] (cosine), among rows of label wanted[k] when given."""
    from avgen.retrieval import topk_cosine

    out = []
    for k, want in enumerate(wanted):
        rows = torch.arange(bank.shape[0]) if want is None else torch.nonzero(labels == want)[:, 0]
        if rows.numel() == 0:
            raise AvgenError(f"no training clip has the material of onset {k}; choose another material")
        _, best = topk_cosine(queries[k:k + 1], bank[rows], 1)
        out.append(int(rows[int(best[0, 0])]))
    return out


def summary_line(onsets: list[Onset]) -> str:
    """'N onsets: 0.30 s wood (0.41), ...' (the first few)."""
    shown = ", ".join(f"{o.time:.2f} s" + (f" {o.material}" if o.material else "") for o in onsets[:5])
    return f"{len(onsets)} onsets" + (f": {shown}" + (", ..." if len(onsets) > 5 else "") if onsets else "")


# ---------------------------------------------------------------- avgen generate --onsets-out / --onsets


def detect_onsets(video: Path, detector: Any, duration: float, model: Any, material: str | int | None = None,
                  ) -> tuple[list[Onset], dict[str, torch.Tensor] | None]:
    """The detector's events over the video, each with the material the model (``avgen.SoundModel``) gives the
    window centred on it (``material``: that class for every event), and the generator's outputs for those
    windows (None without events)."""
    events = detect_events(detector, video, duration)
    outputs = probabilities = None
    if events.shape[0]:
        outputs = model.window_outputs(video, events[:, 0].tolist(), material=material)
        probabilities = model.class_probabilities(outputs)
    onsets = label_events(events, probabilities, model.class_names)
    if material is not None:
        name = model.class_names[model._class_index(material)]
        onsets = [o.model_copy(update={"material": name}) for o in onsets]
    return onsets, outputs


def sound_at_onsets(video: Path, onsets: list[Onset], duration: float, model: Any, bank: Any = None,
                    material: str | int | None = None, outputs: dict[str, torch.Tensor] | None = None,
                    ) -> torch.Tensor:
    """The video's sound made of one sound per onset, each starting at its onset's time.

    With ``bank`` (an ``avgen.ExemplarBank``), each onset takes the exemplar nearest to its window's
    s' (Eq. 8), among the exemplars of the onset's material when it names one and the bank knows
    its rows' classes. Without it, the window's raw sound (with the class forced to ``material``
    when given; else the generator decides). ``outputs``: the generator's outputs for the onsets' windows,
    when already made.
    """
    from avgen.retrieval import time_average

    rate = model.sample_rate
    total = round(duration * rate)
    if not onsets:
        return torch.zeros(total)
    if outputs is None:
        outputs = model.window_outputs(video, [o.time for o in onsets], material=material)
    if bank is not None:
        names = model.class_names
        classes = [entry.get("class") for entry in bank.entries]
        labels = torch.tensor([names.index(c) if c in names else -1 for c in classes])
        restrict = any(c in names for c in classes)
        wanted = [names.index(o.material) if o.material is not None and restrict else None for o in onsets]
        chosen = nearest_of_material(time_average(outputs["rep"]), bank.reps, labels, wanted)
        pieces = [bank.waves[i] for i in chosen]
    else:
        pieces = list(model.raw_sound(outputs["rep"]))
    from avgen.generate import within_unit

    return within_unit(place_sounds(onsets, pieces, rate, total))


DETECTOR_FILE = "detector.json"  # in a run or model folder: {"detector": NAME, "params": {...}}


def kept_detector(folder: Path) -> tuple[Any, str] | None:
    """(detector, its component name) a run or model folder keeps (``detector.json``; a relative file in its
    params is relative to the folder), or None when it keeps none."""
    from avgen.components import BuildContext
    from avgen.plugins import get_component

    path = Path(folder) / DETECTOR_FILE
    if not path.is_file():
        return None
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
        name, params = spec["detector"], dict(spec.get("params") or {})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise AvgenError(f"{path}: unreadable ({exc}); fit the detector again with `avgen timing fit --run`") from exc
    return get_component("detector", name).build(params, BuildContext(run_dir=Path(folder))), name


def fit_detector(recipe: Any, dataset: Any, run_dir: Path, console: Any) -> dict[str, Any]:
    """Fit the recipe's [detector] on the training videos and keep it in the run (detector.json, which
    ``avgen generate`` and ``av_sync`` use); info: the detector and how many videos it learned from."""
    from avgen.components import BuildContext
    from avgen.plugins import get_component

    spec = recipe.detector
    videos = list(dict.fromkeys(Path(c.video) for c in dataset.clips("train") if c.video is not None))
    console.print(f"detector: fitting {spec.name} on {len(videos)} training videos", markup=False)
    detector = get_component("detector", spec.name).build(spec.params, BuildContext(run_dir=run_dir))
    params = {**spec.params, **detector.fit(videos, run_dir)}
    write_json(run_dir / DETECTOR_FILE, {"detector": spec.name, "params": params, "trained_on": {"videos": len(videos)}})
    return {"name": spec.name, "videos": len(videos)}
