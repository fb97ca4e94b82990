"""FrameEncoder: uint8 video frames -> float32 feature vectors with a headless ImageNet CNN."""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from avgen import Encoder

# Peak live activations of a CNN forward pass in inference mode, in floats per input pixel.
# ResNet-152 at 224 px peaks near 40 (two 256 x 56 x 56 maps and a 64 x 112 x 112 one);
# 100 leaves room for the framework's workspace and wider timm models.
ACTIVATION_FLOATS_PER_PIXEL = 100
MEMORY_SHARE = 0.25  # of the free memory one batch may use
MAX_BATCH = {"cpu": 64, "cuda": 512}  # larger CPU batches only evict the cache
# fp32 frames encoded eagerly on the CPU before the network is frozen for inference (``frozen_for_inference``):
# freezing costs 0.5 s (EfficientNet-Lite0) to 1.2 s (ResNet-50) on 2 cores and then saves 4-11 ms per frame,
# so it pays for itself after about 110 frames; a short video's few dozen frames stay eager
FREEZE_AFTER = 256
FROZEN_TOLERANCE = 1e-4  # the frozen network is used only where its output is this close (relative L2) to eager


class FrameEncoder(Encoder):
    """An ``avgen.Encoder``: normalises frames, runs the CNN in batches, returns features."""

    def __init__(
        self,
        model: nn.Module,
        *,
        dim: int,
        fps: float,
        input_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | str = "cpu",
        batch_size: int = 0,
        precision: str = "fp32",
        weights_source: str = "",
        cpu_batch: int = MAX_BATCH["cpu"],
        tuner: Any = None,
    ) -> None:
        self.device = torch.device(device)
        self.use_network(model)
        self.tuner = tuner  # tune = "last_stage": what tune and load_tuned do (avgen_vision.tuning)
        self.tunes = tuner is not None
        self.dim = dim
        self.fps = float(fps)
        self.input_size = input_size
        self.batch_size = batch_size
        self.precision = precision
        self.cpu_batch = cpu_batch  # the automatic batch on CPU is at most this (the backbone's best)
        self.weights_source = weights_source  # for the run report: where the weights came from
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._scale = 1.0 / (255.0 * std_t)  # (x / 255 - mean) / std  ==  x * scale - shift
        self._shift = mean_t / std_t
        self.freeze_after = FREEZE_AFTER

    def use_network(self, model: nn.Module) -> None:
        """Encode with ``model`` from now on (frozen; batch norms folded where it can)."""
        model = model.eval().requires_grad_(False)
        if hasattr(model, "fuse_for_inference"):  # e.g. batch norms folded into convolutions (frozen weights)
            model = model.fuse_for_inference()
        self.model = model.to(self.device, memory_format=torch.channels_last)
        self._eager_frames = 0
        self._frozen: Any = None  # the frozen network; False where freezing failed or disagreed

    def tune(self, data: Any, path: Any) -> dict[str, Any]:
        return self.tuner.tune(self, data, path)

    def load_tuned(self, path: Any) -> None:
        self.tuner.load(self, path)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> float32 [N, dim] on the CPU, without gradient."""
        if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be uint8 [N, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
        count = frames.shape[0]
        out = torch.empty(count, self.dim, dtype=torch.float32)
        step = self.batch_size or auto_batch_size(self.device, self.input_size, self.cpu_batch)
        with torch.inference_mode():
            for start in range(0, count, step):
                batch = self.preprocess(frames[start : start + step])
                features = self._forward(batch)
                out[start : start + step] = features.reshape(len(batch), -1).float().cpu()
        return out

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """The network on one batch: eager, or (fp32 on the CPU, after ``freeze_after`` frames) frozen."""
        if self.device.type == "cpu" and self.precision == "fp32" and not torch.is_autocast_enabled("cpu"):
            if self._frozen is None and self._eager_frames >= self.freeze_after:
                self._frozen = frozen_for_inference(self.model, batch)
            if self._frozen:
                return self._frozen(batch)
            self._eager_frames += len(batch)
        with self._autocast():
            return self.model(batch)

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [B, H, W, 3] -> normalised float [B, 3, S, S] in channels-last memory on the device."""
        x = frames.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()  # NHWC strides = channels-last
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True, align_corners=False)
        x = x.contiguous(memory_format=torch.channels_last)
        return x.mul_(self._scale).sub_(self._shift)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def frozen_for_inference(model: nn.Module, example: torch.Tensor) -> Any:
    """``model`` traced and frozen for inference with TorchScript (batch norms folded, convolutions fused with their
    activations and run in oneDNN's blocked layout: 1.3-1.5x the eager fp32 rate of ResNet-50 and
    EfficientNet-Lite0 on 2 CPU cores), or False where that fails or its output on ``example`` is not within
    FROZEN_TOLERANCE of eager (newer torch versions deprecate TorchScript; eager stays the fallback)."""
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notices
            example = example[:2].clone()  # two frames (tracing and the check cost 5 passes over them), as a
            # normal tensor, not an inference-mode one; the frozen graph takes any batch size
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model.eval(), example)))
            expected, got = model(example).float(), frozen(example).float()
        difference = float((got - expected).norm() / expected.norm().clamp_min(1e-12))
        return frozen if difference <= FROZEN_TOLERANCE else False
    except Exception:  # noqa: BLE001 - any TorchScript failure: keep the eager network
        return False


def auto_batch_size(device: torch.device, input_size: int, cpu_batch: int = MAX_BATCH["cpu"]) -> int:
    """Frames per forward pass so that one batch's activations fit a quarter of the free memory
    (on CPU also at most ``cpu_batch``, the size that keeps the backbone's activations in cache)."""
    per_frame = ACTIVATION_FLOATS_PER_PIXEL * input_size * input_size * 4
    budget = int(free_memory_bytes(device) * MEMORY_SHARE)
    cap = min(cpu_batch, MAX_BATCH["cpu"]) if device.type == "cpu" else MAX_BATCH.get(device.type, MAX_BATCH["cpu"])
    return max(1, min(cap, budget // per_frame))


def free_memory_bytes(device: torch.device) -> int:
    """Free memory of the device: CUDA's free bytes, or the host's MemAvailable."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2 << 30  # unknown platform: assume 2 GiB
