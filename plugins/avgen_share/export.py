"""``avgen export RUN_DIR OUT_DIR``: a run's model as a self-contained folder (see folder.py for the layout)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes

import avgen
from avgen_share.card import LICENCE_FILE, component_rows, licence_file, model_card
from avgen_share.folder import CARD, CONFIG, EXEMPLARS, FORMAT, WEIGHTS, write_bank, write_sums


FIX = "give a new folder in a writable place as OUT_DIR"
COMPONENT_SECTIONS = {"encoder": "encoder", "representation": "representation", "generator": "generator"}


def export_run(run_dir: Path, out_dir: Path, *, exemplars: bool = True, console: Any = None) -> dict[str, Any]:
    """Write the model folder of ``run_dir`` to ``out_dir`` (new or empty); returns file name -> bytes.

    The folder is written beside ``out_dir`` under a temporary name and renamed at the end, so an
    interrupted or failed export leaves no half folder behind; an OUT_DIR that cannot be written (a file on
    its path, no permission, a read-only file system) is refused before the model is loaded.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not run_dir.is_dir():
        raise avgen.AvgenError(f"{run_dir}: no such run directory; give the folder `avgen run` printed")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise avgen.AvgenError(f"{out_dir}: exists and is not an empty folder; give a new folder")
    avgen.check_writable(out_dir, "the model folder", FIX)
    try:
        saved = avgen.saved_model_of_run(run_dir, torch.device("cpu"), exemplars=exemplars, console=console)
    except avgen.AvgenError as exc:
        if exemplars and str(exc).startswith("--exemplar needs"):  # the training clips are neither cached nor on disk
            raise avgen.AvgenError(f"{run_dir}: exporting its exemplar sounds needs the run's training clips "
                                   f"({str(exc).split(': ', 1)[1].split(';')[0]}); put the dataset back, or export "
                                   "with --no-exemplars") from exc
        raise
    meta = saved.meta
    recipe = redact_paths(meta["recipe"])
    config: dict[str, Any] = {
        "format": FORMAT,
        "library_name": "avgen",
        "avgen_version": avgen.__version__,
        "generator": recipe["generator"], "encoder": recipe["encoder"], "representation": recipe["representation"],
        "class_names": list(meta["class_names"]), "shape": meta["shape"],
        "sample_rate": meta["sample_rate"], "clip_seconds": meta["clip_seconds"],
        "exemplars": None,
        "components": {section: avgen.component_source(kind, recipe[section]["name"])
                       for section, kind in COMPONENT_SECTIONS.items()},
        "recipe": recipe,
    }
    if recipe.get("index"):  # a retrieval index other than the default exact one: its plugin is needed to load it
        config["components"]["index"] = avgen.component_source("index", recipe["index"]["name"])
    with avgen.staging_folder(out_dir, suffix=".partial") as staging, avgen.named_as(staging, out_dir):
        weights = safetensors_bytes({k: v.detach().cpu().contiguous() for k, v in saved.weights.items()},
                                    metadata={"format": "pt"})
        with avgen.atomic_path(staging / WEIGHTS) as tmp:
            tmp.write_bytes(weights)
        names = [WEIGHTS, CONFIG, CARD]
        if saved.bank is not None:
            write_bank(staging / EXEMPLARS, saved.bank)
            config["exemplars"] = {"file": EXEMPLARS, "count": int(saved.bank.reps.shape[0]),
                                   "source": "the run's training split", "audio": "int16 PCM"}
            names.append(EXEMPLARS)
        for extra in ("recipe.toml", "metrics.json"):
            if (run_dir / extra).is_file():
                if extra == "recipe.toml":
                    avgen.write_text(staging / extra, _redact_text((run_dir / extra).read_text(encoding="utf-8"),
                                                                   meta["recipe"], recipe))
                else:
                    with avgen.atomic_path(staging / extra) as tmp:
                        shutil.copyfile(run_dir / extra, tmp)
                names.append(extra)
        detector = keep_detector(run_dir, staging)
        if detector is not None:
            config["detector"] = detector["detector"]
            config["components"]["detector"] = avgen.component_source("detector", detector["detector"])
            names += [DETECTOR, detector["params"]["weights"]] if "weights" in detector["params"] else [DETECTOR]
            names += [detector["familiar"]["file"]] if "familiar" in detector else []
        if (run_dir / TUNED_ENCODER).is_file():  # the encoder was tuned in the run (avgen.Encoder.tune)
            with avgen.atomic_path(staging / TUNED_ENCODER) as tmp:
                shutil.copyfile(run_dir / TUNED_ENCODER, tmp)
            names.append(TUNED_ENCODER)
        avgen.write_json(staging / CONFIG, config)
        metrics = avgen.read_json(run_dir / "metrics.json") if (run_dir / "metrics.json").is_file() else {}
        splits = (avgen.read_json(run_dir / "dataset.json") or {}).get("splits") or {}
        train_clips = splits.get("train") if isinstance(splits, dict) else None
        rows = component_rows(recipe)
        avgen.write_text(staging / CARD, model_card(config, metrics or {}, rows, avgen.run_name(run_dir), train_clips))
        avgen.write_text(staging / LICENCE_FILE, licence_file(config, rows))
        names.append(LICENCE_FILE)
        write_sums(staging, names)
        sizes = {name: (staging / name).stat().st_size for name in sorted(os.listdir(staging))}
        try:
            if out_dir.is_dir():
                out_dir.rmdir()  # empty (checked above)
            os.replace(staging, out_dir)
        except OSError as exc:
            raise avgen.folder_error(out_dir, "the model folder", exc, FIX) from exc
    return sizes


TUNED_ENCODER = "encoder.safetensors"  # where a run keeps its tuned encoder, and a model folder too
DETECTOR = "detector.json"  # the contact detector a run keeps (avgen timing fit --run), with its head file


def keep_detector(run_dir: Path, staging: Path) -> dict[str, Any] | None:
    """Copy the run's detector.json, and the head file it names, into the model folder (the head under its own
    name); returns the copied spec, or None when the run keeps no detector."""
    import json

    path = run_dir / DETECTOR
    if not path.is_file():
        return None
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
        params = dict(spec.get("params") or {})
    except (OSError, ValueError, AttributeError) as exc:
        raise avgen.AvgenError(f"{path}: unreadable ({exc}); fit the detector again with `avgen timing fit --run`") from exc
    if isinstance(params.get("weights"), str) and params["weights"] not in ("default", "none"):
        head = Path(params["weights"]) if Path(params["weights"]).is_absolute() else run_dir / params["weights"]
        if not head.is_file():
            raise avgen.AvgenError(f"{path}: names {head}, which is missing; fit it again with `avgen timing fit --run`")
        params["weights"] = "detector.safetensors"
        with avgen.atomic_path(staging / params["weights"]) as tmp:
            shutil.copyfile(head, tmp)
    trained_on = {k: v for k, v in (spec.get("trained_on") or {}).items() if k != "root"}  # no local paths
    familiar = spec.get("familiar")  # what the training videos look like (the detector applies to videos like them)
    spec = {"detector": spec.get("detector"), "params": params, "trained_on": trained_on}
    if isinstance(familiar, dict) and isinstance(familiar.get("file"), str):
        source = run_dir / familiar["file"]
        if not source.is_file():
            raise avgen.AvgenError(f"{path}: names {source}, which is missing; run the fit stage again")
        spec["familiar"] = {**familiar, "file": Path(familiar["file"]).name}
        with avgen.atomic_path(staging / spec["familiar"]["file"]) as tmp:
            shutil.copyfile(source, tmp)
    avgen.write_json(staging / DETECTOR, spec)
    return spec


def redact_paths(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe with every absolute path cut to its last part: they name folders of the machine that
    trained it (data.root, run.out), which a published model card should not show and generation never reads."""
    def redact(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: redact(v) for k, v in value.items()}
        if isinstance(value, list):
            return [redact(v) for v in value]
        if isinstance(value, str) and os.path.isabs(value):
            return Path(value).name
        return value

    return redact(recipe)


def _redact_text(text: str, before: Any, after: Any) -> str:
    """``text`` (the run's recipe.toml) with each string ``redact_paths`` changed replaced the same way."""
    if isinstance(before, dict):
        for key, value in before.items():
            text = _redact_text(text, value, after[key])
    elif isinstance(before, list):
        for old, new in zip(before, after):
            text = _redact_text(text, old, new)
    elif isinstance(before, str) and before != after:
        text = text.replace(json.dumps(before), json.dumps(after)).replace(f"'{before}'", f"'{after}'")
    return text
