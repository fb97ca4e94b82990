"""Sound by events (the ``sound_of_events`` hook): the onsets file of ``avgen generate --onsets-out/--onsets``
and the sound placed by it, one sound per contact (``avgen generate --mode events``, ``SoundModel.events``).

``--onsets-out`` runs a registered ``detector`` over the video and writes its events (time,
confidence) with the generator's material for each (the class head's most probable class in
the window centred on the event). ``--onsets`` reads such a file, edited or not, and builds the
sound from it alone: per onset, the window of video centred on it is generated, its sound
(the exemplar: nearest training clip, of the onset's material when it names one; or the raw
decode) is cut at its attack and mixed in at the onset's time, lasting until the next onset. Nothing else
sounds. By events, the detector's contacts are the onsets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from avgen import AvgenError, probe, write_json

from avgen_timing.chunks import detect_events

FORMAT = "avgen-onsets"
VERSION = 1
FALLBACK_DETECTOR = "region_contacts"  # for a model that keeps no detector: it needs no training (docs/timing.md)


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


def write_onsets(path: Path, onsets: list[Onset], video: Path, duration: float, detector: str | None,
                 class_names: list[str]) -> Path:
    """Write an onsets file (crash-safe)."""
    doc = OnsetsFile(video=str(video), duration=round(duration, 6), detector=detector, materials=list(class_names),
                     onsets=onsets)
    return write_json(Path(path), doc.model_dump())


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


def nearest_of_material(model: Any, queries: torch.Tensor, bank: torch.Tensor, labels: torch.Tensor,
                        wanted: list[int | None]) -> list[int]:
    """Per query [K, D], the index of the nearest bank row [M, D] by the model's retrieval index (the recipe's
    ``[index]``, as windows use; default the exact cosine), among rows of label wanted[k] when given."""
    out = []
    for k, want in enumerate(wanted):
        rows = torch.arange(bank.shape[0]) if want is None else torch.nonzero(labels == want)[:, 0]
        if rows.numel() == 0:
            raise AvgenError(f"no training clip has the material of onset {k}; choose another material")
        _, best = model.index(bank[rows]).search(queries[k:k + 1], 1)
        if int(best[0, 0]) < 0:  # an approximate index may leave the slot empty
            raise AvgenError(f"the retrieval index found no training clip for onset {k}; use the exact index")
        out.append(int(rows[int(best[0, 0])]))
    return out


def summary_line(onsets: list[Onset], what: str = "onsets") -> str:
    """'N onsets: 0.30 s wood, ...' (the first few); ``what``: 'contacts' for the ones a detector found."""
    shown = ", ".join(f"{o.time:.2f} s" + (f" {o.material}" if o.material else "") for o in onsets[:5])
    return f"{len(onsets)} {what}" + (f": {shown}" + (", ..." if len(onsets) > 5 else "") if onsets else "")


# ---------------------------------------------------------------- avgen generate --onsets-out / --onsets


def detect_onsets(video: Path, detector: Any, duration: float, model: Any, material: int | None = None,
                  ) -> tuple[list[Onset], dict[str, torch.Tensor] | None]:
    """The detector's events over the video, each with the material the model (``avgen.SoundModel``) gives the
    window centred on it (``material``: that class index for every event), and the generator's outputs for
    those windows (None without events)."""
    events = detect_events(detector, video, duration)
    outputs = probabilities = None
    if events.shape[0]:
        outputs = model.window_outputs(video, events[:, 0].tolist(), material=material)
        probabilities = model.class_probabilities(outputs)
    onsets = label_events(events, probabilities, model.class_names)
    if material is not None:
        name = model.class_names[material]
        onsets = [o.model_copy(update={"material": name}) for o in onsets]
    return onsets, outputs


def sound_at_onsets(video: Path, onsets: list[Onset], duration: float, model: Any, bank: Any = None,
                    material: int | None = None, outputs: dict[str, torch.Tensor] | None = None,
                    ) -> torch.Tensor:
    """The video's sound made of one sound per onset, each starting at its onset's time.

    With ``bank`` (an ``avgen.ExemplarBank``), each onset takes the exemplar nearest to its window's
    s' (Eq. 8), among the exemplars of the onset's material when it names one and the bank knows
    its rows' classes. Without it, the window's raw sound (with the class forced to ``material``
    when given; else the generator decides). ``outputs``: the generator's outputs for the onsets' windows,
    when already made.
    """
    from avgen import time_average

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
        chosen = nearest_of_material(model, time_average(outputs["rep"]), bank.reps, labels, wanted)
        pieces = [bank.waves[i] for i in chosen]
    else:
        pieces = list(model.raw_sound(outputs["rep"]))
    return place_sounds(onsets, pieces, rate, total)  # the core scales the whole track into [-1, 1]


# ---------------------------------------------------------------- the hook


def sound_of_events(model: Any, video: Path, detector: Any, detector_name: str | None, onsets: Path | None,
                    onsets_out: Path | None, bank: Any, material: int | None, console: Any,
                    ) -> tuple[torch.Tensor, dict[str, Any]]:
    """The ``sound_of_events`` hook (avgen/_core/hookspecs.py): with ``onsets``, one sound per onset of that file;
    else one per contact ``detector`` finds, each with its material, written to ``onsets_out`` when given."""
    duration = float(probe(video).duration)
    if onsets is not None:
        placed = read_onsets(onsets, model.class_names, duration)
        _say(console, f"{onsets}: {summary_line(placed)}")
        wave = sound_at_onsets(video, placed, duration, model, bank=bank, material=material)
        return wave, {"video": str(Path(video).absolute()), "seconds": duration, "sample_rate": model.sample_rate,
                      "onsets": len(placed)}
    found, outputs = detect_onsets(video, detector, duration, model, material=material)
    wave = sound_at_onsets(video, found, duration, model, bank=bank, material=material, outputs=outputs)
    summary = {"video": str(Path(video).absolute()), "seconds": duration, "sample_rate": model.sample_rate, "mode": "events",
               "onsets": len(found), "contacts": [o.model_dump() for o in found]}
    if detector_name is not None:
        summary["detector"] = detector_name
    if onsets_out is not None:
        write_onsets(onsets_out, found, video, duration, detector_name, model.class_names)
    _say(console, f"{onsets_out if onsets_out is not None else video}: {summary_line(found, 'contacts')}")
    return wave, summary


def _say(console: Any, line: str) -> None:
    if console is not None:
        console.print(line, markup=False, highlight=False)
