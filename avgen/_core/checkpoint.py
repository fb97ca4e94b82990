"""The checkpoint format: weights, optimiser tensors and JSON state in one safetensors file.

A checkpoint ``NAME.safetensors`` holds the model's tensors, the optimiser's tensors under
``OPTIMIZER_PREFIX`` names, the JSON training state under the metadata key ``STATE_KEY`` (with
``meta``: the resolved recipe, class names, generator shape, sample rate; see ``checkpoint_meta``)
and the SHA-256 of its tensors; ``NAME.json`` is a readable copy of the state. Nothing is unpickled.
"""

from __future__ import annotations

import json
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from avgen import __version__
from avgen._core.atomic import write_bytes, write_text
from avgen._core.errors import AvgenError
from avgen._core.tensorfile import DIGEST_KEY, read_verified, tensor_digest

OPTIMIZER_PREFIX = "__optimizer__."  # optimiser tensors share the checkpoint file with the weights
STATE_KEY = "avgen_state"  # safetensors metadata key holding the checkpoint's JSON state


def checkpoint_meta(recipe: dict[str, Any], class_names: list[str], shape: Any, sample_rate: int,
                    clip_seconds: float) -> dict[str, Any]:
    """What ``avgen generate --run DIR`` needs to rebuild the model: the checkpoint's ``meta``."""
    return {
        "recipe": recipe,
        "class_names": list(class_names),
        "shape": shape.__dict__,
        "sample_rate": sample_rate,
        "clip_seconds": clip_seconds,
        "avgen": __version__,
    }


def load_run_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Tensor], dict[str, Any]]:
    """(path, weights, meta) of a run's best checkpoint, whose meta must hold the recipe and generator shape."""
    ckpt = run_dir / "checkpoints" / "best.safetensors"
    if not ckpt.is_file():
        raise AvgenError(f"{run_dir}: no trained model (checkpoints/best.safetensors); train it with `avgen run RECIPE`")
    state, info = load_checkpoint(ckpt)
    meta = info.get("meta") or {}
    if "recipe" not in meta or "shape" not in meta:
        raise AvgenError(f"{ckpt}: checkpoint carries no recipe/shape; it was not written by `avgen run`")
    return ckpt, state, meta


def save_checkpoint(path: Path, model: nn.Module, state: dict, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Weights (+ optimiser tensors) and the JSON state in one safetensors file, plus a readable .json copy."""
    tensors = {key: value.detach().cpu().clone().contiguous() for key, value in model.state_dict().items()}
    if optimizer is not None:
        optimizer_tensors, state["optimizer"] = _flatten_optimizer(optimizer)
        tensors.update(optimizer_tensors)
    text = json.dumps(state, default=_json_default)
    write_bytes(path, safetensors_bytes(tensors, metadata={STATE_KEY: text, DIGEST_KEY: tensor_digest(tensors)}))
    write_text(path.with_suffix(".json"), json.dumps(json.loads(text), indent=2) + "\n")


def load_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict]:
    """(model state dict, JSON state with epoch, history, meta) of a ``.safetensors`` checkpoint (or its ``.json``)."""
    tensors, state = read_checkpoint(Path(path).with_suffix(".safetensors"))
    return {k: v for k, v in tensors.items() if not k.startswith(OPTIMIZER_PREFIX)}, state


def read_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict]:
    """Tensors and JSON state of a checkpoint: safetensors only (nothing is unpickled), checked against its SHA-256."""
    if not path.is_file():
        raise AvgenError(f"checkpoint {path} not found; train first (avgen run RECIPE)")
    try:
        tensors, meta = read_verified(path)
        if STATE_KEY not in meta:
            raise ValueError(f"no {STATE_KEY} metadata")
        state = json.loads(meta[STATE_KEY])
        if not isinstance(state, dict):
            raise ValueError("its state is not a JSON object")
    except Exception as exc:  # a pickle, truncated or edited bytes: safetensors raises its own error types
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise AvgenError(f"checkpoint {path} is not a valid avgen checkpoint ({reason}); "
                         "it is not loaded; start over with --fresh") from None
    return tensors, state


def resume_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Load weights and optimiser state of a ``last`` checkpoint; returns its training state (epoch, history, ...)."""
    tensors, state = read_checkpoint(path)
    weights = {k: v for k, v in tensors.items() if not k.startswith(OPTIMIZER_PREFIX)}
    try:
        model.load_state_dict(weights)
        optimizer.load_state_dict(_unflatten_optimizer(tensors, state["optimizer"]))
    except (RuntimeError, KeyError, ValueError) as exc:
        raise AvgenError(f"checkpoint {path} does not match this model ({str(exc).splitlines()[0]}); start over with --fresh") from None
    keys = ("epoch", "history", "best_value", "best_epoch", "stale", "stopped_early")
    missing = [key for key in keys if key not in state]
    if missing:
        raise AvgenError(f"checkpoint {path} lacks the training state {', '.join(missing)}; start over with --fresh")
    return {key: state[key] for key in keys}


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    """Optimiser state tensors under OPTIMIZER_PREFIX names; the rest as JSON."""
    full = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in full["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{OPTIMIZER_PREFIX}{index}.{key}"] = value.detach().cpu().clone().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": full["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, Tensor], info: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    entries = [(k[len(OPTIMIZER_PREFIX) :], v) for k, v in tensors.items() if k.startswith(OPTIMIZER_PREFIX)]
    for name, value in entries + list(info["scalars"].items()):
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": info["param_groups"]}


def _json_default(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if isinstance(obj, Tensor):
        return obj.tolist()
    return str(obj)
