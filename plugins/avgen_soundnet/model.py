"""SoundNet-8 (Aytar et al. 2016) in PyTorch, following the original torch7 layer table."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from avgen import AvgenError

SAMPLE_RATE = 22050  # SoundNet was trained on mono audio at 22 050 Hz
INPUT_SCALE = 256.0  # and on waveforms in [-256, 256] (the original preprocess multiplies by 256)
BN_EPS = 1e-5  # torch7 SpatialBatchNormalization's default, also used by the TensorFlow port


@dataclass(frozen=True)
class ConvSpec:
    """One conv layer of the table: channels, kernel, stride, padding and the max-pool after it (0: none)."""

    name: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    padding: int
    pool: int = 0
    batch_norm: bool = True


# conv1..conv7: conv + batch norm + ReLU (+ max pool, kernel = stride); conv8 (1000 objects) and
# conv8_2 (401 scenes) are plain convolutions on conv7.
BODY: tuple[ConvSpec, ...] = (
    ConvSpec("conv1", 1, 16, 64, 2, 32, pool=8),
    ConvSpec("conv2", 16, 32, 32, 2, 16, pool=8),
    ConvSpec("conv3", 32, 64, 16, 2, 8),
    ConvSpec("conv4", 64, 128, 8, 2, 4),
    ConvSpec("conv5", 128, 256, 4, 2, 2, pool=4),
    ConvSpec("conv6", 256, 512, 4, 2, 2),
    ConvSpec("conv7", 512, 1024, 4, 2, 2),
)
HEADS: tuple[ConvSpec, ...] = (
    ConvSpec("conv8", 1024, 1000, 8, 2, 0, batch_norm=False),
    ConvSpec("conv8_2", 1024, 401, 8, 2, 0, batch_norm=False),
)
LAYERS: tuple[ConvSpec, ...] = BODY + HEADS
LAYER_NAMES: tuple[str, ...] = tuple(spec.name for spec in LAYERS)
HEAD_NAMES: tuple[str, ...] = tuple(spec.name for spec in HEADS)


class ConvBlock(nn.Module):
    """conv -> batch norm (stored statistics) -> ReLU -> optional max pool."""

    def __init__(self, spec: ConvSpec) -> None:
        super().__init__()
        self.conv = nn.Conv1d(spec.in_channels, spec.out_channels, spec.kernel, spec.stride, spec.padding)
        self.bn = nn.BatchNorm1d(spec.out_channels, eps=BN_EPS)
        self.pool = nn.MaxPool1d(spec.pool, spec.pool) if spec.pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.bn(self.conv(x))))


class SoundNet8(nn.Module):
    """SoundNet-8: mono 22 050 Hz waveform in [-1, 1] [B, T] -> features of any layer [B, C, T'].

    The network is a frozen feature extractor: batch norm always uses the stored statistics
    (``train()`` keeps it in eval mode), and ``load_soundnet8`` turns gradients off for its weights.
    """

    sample_rate = SAMPLE_RATE
    input_scale = INPUT_SCALE

    def __init__(self) -> None:
        super().__init__()
        for spec in BODY:
            self.add_module(spec.name, ConvBlock(spec))
        for spec in HEADS:
            self.add_module(spec.name, nn.Conv1d(spec.in_channels, spec.out_channels, spec.kernel, spec.stride))
        self.object_names: list[str] = []
        self.place_names: list[str] = []
        self.eval()

    def train(self, mode: bool = True) -> "SoundNet8":
        """Stay in eval mode: the stored batch-norm statistics are part of the pretrained model."""
        return super().train(False)

    def forward(self, wave: torch.Tensor, layers: Iterable[str] = ("conv7",)) -> dict[str, torch.Tensor]:
        """Features {layer: [B, C, T']} for the requested layers (conv1..conv7, conv8, conv8_2)."""
        wanted = [layers] if isinstance(layers, str) else list(layers)
        unknown = [name for name in wanted if name not in LAYER_NAMES]
        if unknown or not wanted:
            raise AvgenError(f"SoundNet layer {unknown or wanted!r} is unknown; layers are {', '.join(LAYER_NAMES)}")
        if wave.dim() == 1:
            wave = wave[None]
        if wave.dim() != 2:
            raise AvgenError(f"SoundNet8 takes a waveform [B, T] or [T], got shape {tuple(wave.shape)}")
        deepest = max(wanted, key=LAYER_NAMES.index)
        if wave.shape[-1] < min_samples(deepest):
            raise AvgenError(
                f"waveform of {wave.shape[-1]} samples is too short for SoundNet {deepest}; "
                f"give at least {min_samples(deepest)} samples at {SAMPLE_RATE} Hz"
            )
        x = (wave.to(self.conv1.conv.weight.dtype) * self.input_scale)[:, None, :]
        out: dict[str, torch.Tensor] = {}
        for spec in layer_chain(deepest):
            if not spec.batch_norm:
                break
            x = getattr(self, spec.name)(x)
            out[spec.name] = x
        for spec in HEADS:
            if spec.name in wanted:
                out[spec.name] = getattr(self, spec.name)(x)
        return {name: out[name] for name in wanted}

    def features(self, wave: torch.Tensor, layer: str = "conv7") -> torch.Tensor:
        """Features of one layer [B, C, T']."""
        return self(wave, (layer,))[layer]


def layer_chain(layer: str) -> tuple[ConvSpec, ...]:
    """The convolutions a waveform passes through up to and including ``layer``."""
    if layer in HEAD_NAMES:
        return BODY + tuple(spec for spec in HEADS if spec.name == layer)
    return BODY[: LAYER_NAMES.index(layer) + 1]


def min_samples(layer: str) -> int:
    """The shortest waveform (samples at 22 050 Hz) that gives one time step at ``layer``."""
    need = 1
    for spec in reversed(layer_chain(layer)):
        need *= max(spec.pool, 1)  # a max pool with kernel = stride P needs P inputs per output
        need = max((need - 1) * spec.stride + spec.kernel - 2 * spec.padding, 1)
    return need


def load_soundnet8(path: Path | None = None, device: torch.device | str | None = None) -> SoundNet8:
    """The pretrained SoundNet-8 from the converted safetensors (SHA-256 checked), frozen, in eval mode."""
    from avgen_soundnet.weights import load_weights

    weights = load_weights(path)
    model = SoundNet8()
    missing, unexpected = model.load_state_dict(weights.tensors, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise AvgenError(
            f"SoundNet weights {weights.path} do not fit SoundNet8 (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "run `avgen weights fetch soundnet` to repair"
        )
    model.object_names = weights.object_names
    model.place_names = weights.place_names
    model.requires_grad_(False)
    return model.to(device) if device is not None else model
