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

DETECTOR_FILE = "detector.json"  # in a run or model folder: {"detector": NAME, "params": {...}}
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
    from avgen._core.components import BuildContext
    from avgen._core.plugins import get_component

    spec = recipe.detector
    videos = list(dict.fromkeys(Path(c.video) for c in dataset.clips("train") if c.video is not None))
    console.print(f"detector: fitting {spec.name} on {len(videos)} training videos", markup=False)
    detector = get_component("detector", spec.name).build(spec.params, BuildContext(run_dir=run_dir))
    params = {**spec.params, **detector.fit(videos, run_dir)}
    write_json(run_dir / DETECTOR_FILE, {"detector": spec.name, "params": params, "trained_on": {"videos": len(videos)}})
    return {"name": spec.name, "videos": len(videos)}
