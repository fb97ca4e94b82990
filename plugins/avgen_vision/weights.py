"""Where encoder weights come from: state-dict files, the torchvision and timm caches, or nothing."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from avgen import AvgenError

log = logging.getLogger("avgen_vision")

StateDict = dict[str, torch.Tensor]


def load_state_dict_file(path: Path, what: str) -> StateDict:
    """Tensors of a .safetensors file or a plain .pth/.pt state dict (``weights_only=True``)."""
    if not path.is_file():
        raise AvgenError(
            f"{what}: weights file '{path}' does not exist; give a .pth/.pt/.safetensors state dict, "
            "'imagenet' or 'none'"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle with code in it, a truncated file, not a tensor file at all
        raise AvgenError(
            f"{what}: cannot read weights file '{path}' ({type(exc).__name__}: {_first_line(exc)}); "
            "it must be a safetensors file or a plain state dict saved with torch.save(model.state_dict())"
        ) from exc
    return unwrap_state_dict(state, path, what)


def unwrap_state_dict(state: object, path: Path | str, what: str) -> StateDict:
    """The tensor mapping of a state dict, also when a checkpoint nests it under 'state_dict' or 'model'."""
    if isinstance(state, Mapping):
        for key in ("state_dict", "model"):
            inner = state.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                state = inner
                break
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AvgenError(f"{what}: weights file '{path}' does not hold a state dict (a mapping of names to tensors)")
    return {str(k): v for k, v in state.items()}


def load_into(model: nn.Module, state: StateDict, head: tuple[str, ...], what: str, source: str) -> None:
    """Load ``state`` into a model whose classifier was removed; only the head's keys may be left over."""
    own = model.state_dict()
    state = {k.removeprefix("module."): v for k, v in state.items()}  # DataParallel/DDP checkpoints
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own and not k.startswith(head)]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]!r})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of the wrong shape (e.g. {k!r}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})")
        raise AvgenError(f"{what}: weights from {source} do not fit the architecture: {', '.join(parts)} keys")
    model.load_state_dict({k: state[k] for k in own})


def warn_random_weights(what: str) -> str:
    """Say loudly, in the log and as a Python warning, that features come from an untrained CNN."""
    message = (
        f"{what}: weights = 'none', the CNN is RANDOMLY INITIALISED; its features carry no ImageNet "
        "knowledge and results are not comparable to the paper (use only for tests)"
    )
    log.warning(message)
    warnings.warn(message, UserWarning, stacklevel=3)
    return message


def torchvision_imagenet(url: str, what: str) -> tuple[StateDict, str]:
    """torchvision's ImageNet state dict: the torch.hub cache when the file is there, else its download."""
    filename = url.rsplit("/", 1)[-1]
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    cached = checkpoints / filename
    if cached.is_file():
        return load_state_dict_file(cached, what), str(cached)
    try:
        state = torch.hub.load_state_dict_from_url(
            url, model_dir=str(checkpoints), map_location="cpu", progress=False, check_hash=True, weights_only=True
        )
    except Exception as exc:  # offline (URLError), proxy refused, hash mismatch, disk full
        raise AvgenError(
            f"{what}: ImageNet weights '{filename}' are not in the torch hub cache and could not be "
            f"downloaded ({type(exc).__name__}: {_first_line(exc)}); copy {url} to '{cached}' "
            "(or set weights = '/path/to/file.pth')"
        ) from exc
    return unwrap_state_dict(state, cached, what), str(cached)


def timm_imagenet(model_name: str, pretrained_cfg: Mapping[str, object], what: str) -> tuple[StateDict, str]:
    """timm's pretrained weights: the Hugging Face / torch.hub cache when there, else timm's download."""
    hub_id = pretrained_cfg.get("hf_hub_id")
    url = pretrained_cfg.get("url")
    if hub_id:
        return _timm_from_hf(str(hub_id), what)
    if url:
        return torchvision_imagenet(str(url), what)  # older timm weights live on GitHub releases
    raise AvgenError(f"{what}: timm has no pretrained weights for '{model_name}'; set weights to a file or 'none'")


def _timm_from_hf(hub_id: str, what: str) -> tuple[StateDict, str]:
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin"):
        cached = try_to_load_from_cache(hub_id, filename)
        if isinstance(cached, str) and Path(cached).is_file():
            return load_state_dict_file(Path(cached), what), cached
    try:
        _check_reachable("huggingface.co")  # offline, hf_hub_download would retry for ~30 s, logging each try
        path = hf_hub_download(hub_id, "model.safetensors")
    except Exception as exc:  # offline mode, no network, no such file
        raise AvgenError(
            f"{what}: timm weights 'model.safetensors' of '{hub_id}' are not in the Hugging Face cache "
            f"('{constants.HF_HUB_CACHE}') and could not be downloaded ({type(exc).__name__}: "
            f"{_first_line(exc)}); download https://huggingface.co/{hub_id}/resolve/main/model.safetensors "
            "and set weights = '/path/to/model.safetensors'"
        ) from exc
    return load_state_dict_file(Path(path), what), path


def _check_reachable(host: str, timeout: float = 5.0) -> None:
    """Raise OSError at once when ``host``:443 cannot be reached directly (no DNS, no route, refused).
    Behind a proxy the download client knows the way, so there is nothing to check here."""
    import os
    import socket

    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return
    with socket.create_connection((host, 443), timeout=timeout):
        pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""
