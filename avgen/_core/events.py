"""Sound by events: the extension point behind ``SoundModel.events`` and ``avgen generate --mode events``,
``--onsets`` and ``--onsets-out``, and the contact detector a run or model folder keeps.

The core makes no sound by events itself: a plugin does, by answering the ``sound_of_events`` hook
(and ``events_detector``, the detector it uses for a model that keeps none); see avgen/_core/hookspecs.py.
The timing plugin is the builtin one (plugins/avgen_timing/onsets.py: the onsets file, one sound
per contact). Without such a plugin, what asks for events is one line, and ``generate --mode auto``
slides windows. What stays here is framework: the detector a run keeps (``detector.json``, built
through the registry) and the fit stage's call of ``Detector.fit``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from avgen._core.atomic import write_json
from avgen._core.errors import AvgenError

DETECTOR_FILE = "detector.json"  # in a run or model folder: {"detector": NAME, "params": {...}, "familiar": {...}}
FAMILIAR_FILE = "familiar.safetensors"  # beside it: encoder features of the training clips the detector was fitted on
REFERENCE_ROWS = 2048  # training frames kept as the reference (evenly spaced over the split)
LEVEL_QUANTILE = 0.05  # the level: this quantile of the validation clips' similarity to the reference
FAMILIAR_SHARE = 0.75  # a video is unlike the training videos when its similarity is below this share of the level
CHECK_FRAMES = 8  # frames of a video (evenly spaced) compared with the reference
MISSING = ("no plugin makes sound by events (the timing plugin, avgen_timing, does: install it, "
           "or add timing to AVGEN_LOAD_PLUGINS)")


def events_available() -> bool:
    """Whether a loaded plugin answers ``sound_of_events``."""
    from avgen._core.plugins import get_plugins

    return bool(get_plugins().pm.hook.sound_of_events.get_hookimpls())


def require_events(what: str) -> None:
    """One AvgenError line naming the missing plugin when none makes sound by events (``what``: the option asking)."""
    if not events_available():
        raise AvgenError(f"{what}: {MISSING}")


def default_detector() -> str | None:
    """The detector (component name) the events plugin uses for a model that keeps none (``events_detector``)."""
    from avgen._core.plugins import first_answer

    return first_answer("events_detector")


def fallback_detector(who: str, fix: str) -> tuple[str, Any]:
    """(name, detector) the events plugin offers for a model that keeps none; one line (``who`` keeps no ...,
    ending with ``fix``) when it offers none."""
    from avgen._core.plugins import create

    name = default_detector()
    if name is None:
        raise AvgenError(f"{who} keeps no contact detector and the events plugin offers none: {fix}")
    return name, create("detector", name)


def sound_of_events(model: Any, video: Path, *, detector: Any = None, detector_name: str | None = None,
                    onsets: Path | None = None, onsets_out: Path | None = None, bank: Any = None,
                    material: int | None = None, console: Any = None) -> tuple[Any, dict[str, Any]]:
    """(wave [T] in [-1, 1], summary) of ``video`` by events, from the plugin that answers ``sound_of_events``."""
    from avgen._core.plugins import first_answer

    found = first_answer("sound_of_events", model=model, video=Path(video), detector=detector,
                         detector_name=detector_name, onsets=onsets, onsets_out=onsets_out, bank=bank,
                         material=material, console=console)
    if found is None:
        raise AvgenError(f"sound by events: {MISSING}")
    from avgen._core.videosound import within_unit

    wave, summary = found  # a plugin's mix may peak above 1: scaled for PCM, as windows are
    return within_unit(wave), {**summary, **model.frames_check(video)}  # how the contacts' frames were encoded


def kept_detector(folder: Path) -> tuple[Any, str] | None:
    """(detector, its component name) a run or model folder keeps (``detector.json``; a relative file in its
    params is relative to the folder), or None when it keeps none."""
    from avgen._core.components import BuildContext
    from avgen._core.plugins import get_component

    spec = detector_spec(folder)
    if spec is None:
        return None
    name, params = spec["detector"], spec["params"]
    return get_component("detector", name).build(params, BuildContext(run_dir=Path(folder))), name


def detector_spec(folder: Path) -> dict[str, Any] | None:
    """The ``detector.json`` of a run or model folder (``detector`` and ``params`` checked), or None without one."""
    path = Path(folder) / DETECTOR_FILE
    if not path.is_file():
        return None
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
        return {**spec, "detector": str(spec["detector"]), "params": dict(spec.get("params") or {})}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise AvgenError(f"{path}: unreadable ({exc}); fit the detector again with `avgen timing fit --run`") from exc


def fit_detector(recipe: Any, dataset: Any, run_dir: Path, console: Any, featurized: Any = None) -> dict[str, Any]:
    """Fit the recipe's [detector] on the training videos and keep it in the run (detector.json, which
    ``avgen generate`` and ``av_sync`` use); info: the detector and how many videos it learned from.

    With ``featurized`` (split name -> the split's tensors) and an encoder, the run also keeps what its training
    videos look like (``familiar_reference``), so ``SoundModel.detector_for`` uses the fitted detector only on
    videos like them."""
    from avgen._core.components import BuildContext
    from avgen._core.plugins import get_component

    spec = recipe.detector
    videos = list(dict.fromkeys(Path(c.video) for c in dataset.clips("train") if c.video is not None))
    console.print(f"detector: fitting {spec.name} on {len(videos)} training videos", markup=False)
    detector = get_component("detector", spec.name).build(spec.params, BuildContext(run_dir=run_dir))
    annotated = {video: [float(t) for t in times] for video in videos if (times := dataset.contact_times(video)) is not None}
    detector.annotated = annotated or None  # the dataset's own times, where it has them
    params = {**spec.params, **detector.fit(videos, run_dir)}
    if detector.fit_summary:
        console.print(f"detector: {detector.fit_summary}", markup=False)
    familiar = familiar_reference(run_dir, featurized("train").features, featurized("val").features) \
        if featurized is not None and recipe.encoder is not None else None
    trained_on = {"videos": len(videos), **({"annotated_by_the_dataset": len(annotated)} if annotated else {})}
    write_json(run_dir / DETECTOR_FILE, {"detector": spec.name, "params": params, "trained_on": trained_on,
                                         **({"familiar": familiar} if familiar else {})})
    return {"name": spec.name, **trained_on, **({"kept": detector.fit_summary} if detector.fit_summary else {}),
            **({"familiar_level": familiar["level"]} if familiar else {})}


# ---------------------------------------------------------------------------------------------- familiar videos
# A detector fitted on one kind of video does not transfer to another (the quickstart's, fitted on rendered hits,
# finds 5 % of the contacts of real footage, where the untrained fallback finds half). The run keeps the encoder
# features of its training frames; a video whose frames are far less like them than the held-out validation
# clips are gets the events plugin's fallback detector instead (docs/timing.md).


def unit_rows(x: Any) -> Any:
    """Rows scaled to unit length (float32)."""
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def similarity(frames: Any, reference: Any) -> float:
    """How like the reference frames [R, D] some frames [K, D] are: the median over the frames of the cosine to
    the nearest reference frame."""
    import torch

    return float(torch.quantile((unit_rows(frames) @ unit_rows(reference).T).max(dim=1).values, 0.5))


def familiar_reference(run_dir: Path, train: Any, val: Any) -> dict[str, Any] | None:
    """Keep ``REFERENCE_ROWS`` evenly spaced training frames' features in ``FAMILIAR_FILE`` and return the level
    (the ``LEVEL_QUANTILE`` of the validation clips' similarity to them) and share; None without validation clips."""
    import torch
    from safetensors.torch import save_file

    from avgen._core.atomic import atomic_path

    if train is None or val is None or len(train) == 0 or len(val) == 0 or train.dim() != 3:
        return None
    rows = train.reshape(-1, train.shape[-1])
    pick = torch.linspace(0, len(rows) - 1, min(REFERENCE_ROWS, len(rows))).round().long().unique()
    reference = unit_rows(rows[pick])
    sims = torch.tensor([similarity(clip, reference) for clip in val])
    level = float(torch.quantile(sims, LEVEL_QUANTILE))
    with atomic_path(run_dir / FAMILIAR_FILE) as tmp:
        save_file({"reference": reference.half().contiguous()}, str(tmp))
    return {"file": FAMILIAR_FILE, "level": round(level, 4), "share": FAMILIAR_SHARE}


def kept_familiar(folder: Path) -> tuple[Any, float] | None:
    """(reference frames [R, D], the similarity below which a video is unlike them) that a run or model folder
    keeps with its detector, or None (none kept: a detector fitted by `avgen timing fit` applies everywhere)."""
    from safetensors.torch import load_file

    spec = (detector_spec(folder) or {}).get("familiar")
    if not spec:
        return None
    try:
        reference = load_file(str(Path(folder) / spec["file"]))["reference"].float()
        return reference, float(spec["level"]) * float(spec.get("share", FAMILIAR_SHARE))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise AvgenError(f"{Path(folder) / DETECTOR_FILE}: its familiar reference is unreadable ({exc}); run the fit "
                         "stage again (avgen run RECIPE --only fit)") from exc
