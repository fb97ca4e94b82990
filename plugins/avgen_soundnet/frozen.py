"""A frozen SoundNet-8 for the perceptual loss: batch norm folded into the convolutions, short outputs as one matmul,
and the real clips' features remembered, so a training step pays for one forward and backward instead of two
forwards, a backward and six batch norms each way (benchmarks/bench_train.py measures both in one run).

Folding is exact algebra: with stored statistics, BN(conv(x)) = conv'(x) with weight w * g / sqrt(v + eps) and
bias (b - m) * g / sqrt(v + eps) + beta. Layers whose output has at most ``MATMUL_STEPS`` steps (conv6 and conv7 on
0.5 s clips, one step each) run as an unfold + matmul: the same sums, without the convolution library's weight
reordering on every call, which dominates there.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from avgen_soundnet.model import SoundNet8, layer_chain

MATMUL_STEPS = 8  # output steps at or below which a convolution runs as one matmul
MEMO_BYTES = 512 << 20  # the real clips' features kept at most (0.5 s clips: 4 KB each, ~130 k clips)
FIXED_CHUNK = 8  # the real clips' features are computed this many rows at a time (zero rows fill the last chunk)


@dataclass(frozen=True)
class FoldedConv:
    """One conv + batch norm + ReLU (+ max pool) block with the batch norm folded in."""

    weight: torch.Tensor  # [out, in, kernel]
    bias: torch.Tensor  # [out]
    stride: int
    padding: int
    pool: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out_steps = (x.shape[-1] + 2 * self.padding - self.weight.shape[-1]) // self.stride + 1
        if out_steps <= MATMUL_STEPS:
            cols = F.pad(x, (self.padding, self.padding)).unfold(-1, self.weight.shape[-1], self.stride)  # [B, C, L', k]
            flat = cols.permute(0, 2, 1, 3).reshape(x.shape[0] * out_steps, -1)
            y = torch.addmm(self.bias, flat, self.weight.reshape(self.weight.shape[0], -1).t())
            y = y.reshape(x.shape[0], out_steps, -1).transpose(1, 2)
        else:
            y = F.conv1d(x, self.weight, self.bias, self.stride, self.padding)
        y = torch.relu(y)
        return F.max_pool1d(y, self.pool, self.pool) if self.pool else y


def fold(model: SoundNet8, layer: str, device: torch.device | None = None) -> list[FoldedConv]:
    """The blocks up to ``layer`` (conv1..conv7) with their batch norms folded in, as constant tensors."""
    blocks = []
    with torch.no_grad():
        for spec in layer_chain(layer):
            block = getattr(model, spec.name)
            scale = block.bn.weight / torch.sqrt(block.bn.running_var + block.bn.eps)
            weight = (block.conv.weight * scale[:, None, None]).contiguous()
            bias = (block.conv.bias - block.bn.running_mean) * scale + block.bn.bias
            if device is not None:
                weight, bias = weight.to(device), bias.to(device)
            blocks.append(FoldedConv(weight, bias, spec.stride, spec.padding, spec.pool))
    return blocks


class FrozenSoundNet:
    """Features of one SoundNet layer through the folded blocks, with the features of fixed (real) waves remembered."""

    def __init__(self, model: SoundNet8, layer: str, memo_bytes: int = MEMO_BYTES) -> None:
        self.model, self.layer, self.memo_bytes = model, layer, memo_bytes
        self._blocks: dict[torch.device, list[FoldedConv]] = {}
        self._memo: dict[bytes, torch.Tensor] = {}
        self._memo_size = 0

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        """Features [B, C, T'] of waves [B, T] at 22 050 Hz (gradient flows to ``wave``)."""
        blocks = self._blocks.get(wave.device)
        if blocks is None:
            blocks = self._blocks[wave.device] = fold(self.model, self.layer, wave.device)
        x = (wave.to(blocks[0].weight.dtype) * self.model.input_scale)[:, None, :]
        for block in blocks:
            x = block(x)
        return x

    @torch.no_grad()
    def fixed(self, wave: torch.Tensor) -> torch.Tensor:
        """Features of waves that never change (the real clips): computed once per distinct row, then remembered.

        A row's features depend on nothing but the row: the convolution library's sums differ in the last bits
        with the batch size, so the missing rows go through in chunks of ``FIXED_CHUNK``, the last one filled with
        zero rows. (They went through as the batch that first held them, so a resumed run, whose batches first held
        other rows, trained on features differing in the 7th digit from the uninterrupted run's.)"""
        keys = [hashlib.blake2b(row.numpy().tobytes(), digest_size=16).digest() for row in wave.detach().float().cpu()]
        missing = [i for i, key in enumerate(keys) if key not in self._memo]
        found = dict(zip(missing, self._chunked(wave[missing]))) if missing else {}
        for i, features in found.items():
            size = features.numel() * features.element_size()
            if self._memo_size + size <= self.memo_bytes:
                self._memo[keys[i]] = features
                self._memo_size += size
        return torch.stack([found[i] if i in found else self._memo[key] for i, key in enumerate(keys)])

    def _chunked(self, wave: torch.Tensor) -> torch.Tensor:
        """``self(wave)``, computed ``FIXED_CHUNK`` rows at a time whatever the rows' number."""
        pad = -len(wave) % FIXED_CHUNK
        padded = torch.cat([wave, wave.new_zeros(pad, *wave.shape[1:])]) if pad else wave
        return torch.cat([self(padded[i:i + FIXED_CHUNK]) for i in range(0, len(padded), FIXED_CHUNK)])[: len(wave)]
