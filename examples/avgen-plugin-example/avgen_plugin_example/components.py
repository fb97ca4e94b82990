"""The example plugin's components; each subclasses one of avgen's base classes."""

from __future__ import annotations

import math

import torch
import torchaudio
from pydantic import BaseModel, ConfigDict, Field

import avgen
from avgen import Clip, EvalContext


class MelParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sample_rate: int = Field(22050, gt=0, description="sample rate in Hz")
    n_fft: int = Field(1024, ge=16, description="FFT size")
    hop: int = Field(256, ge=1, description="hop length in samples")
    n_mels: int = Field(64, ge=1, le=512, description="mel bands")
    n_iter: int = Field(32, ge=1, description="Griffin-Lim iterations in decode")


class Mel(avgen.Representation):
    """log(1 + mel power spectrogram); decode inverts the mel scale then runs Griffin-Lim."""

    phases = ("griffin_lim",)  # decode always runs Griffin-Lim

    def __init__(self, p: MelParams) -> None:
        super().__init__()
        self.p = p
        self.sample_rate, self.dim = p.sample_rate, p.n_mels
        self.mel = torchaudio.transforms.MelSpectrogram(p.sample_rate, n_fft=p.n_fft, hop_length=p.hop, n_mels=p.n_mels)
        self.inverse_mel = torchaudio.transforms.InverseMelScale(p.n_fft // 2 + 1, p.n_mels, p.sample_rate)
        self.griffin_lim = torchaudio.transforms.GriffinLim(n_fft=p.n_fft, hop_length=p.hop, n_iter=p.n_iter, power=2.0)

    def frames(self, num_samples: int) -> int:
        return num_samples // self.p.hop + 1

    def encode(self, wave: torch.Tensor, sample_rate: int | None = None) -> torch.Tensor:
        if sample_rate is not None and sample_rate != self.sample_rate:
            wave = torchaudio.functional.resample(wave, sample_rate, self.sample_rate)
        return torch.log1p(self.mel(wave))

    def decode(self, rep: torch.Tensor, phase: str = "griffin_lim", reference: torch.Tensor | None = None,
               length: int | None = None) -> torch.Tensor:
        power = self.inverse_mel(torch.expm1(rep).clamp_min(0))
        wave = self.griffin_lim(power)
        if length is not None:
            wave = torch.nn.functional.pad(wave, (0, max(0, length - wave.shape[-1])))[..., :length]
        return wave


class MeanEnergyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    floor_db: float = Field(-100.0, description="energies below this are clipped (dB)")


class MeanEnergy(avgen.Metric):
    """Mean per-clip energy in dB: real, each generated kind, and generated minus real."""

    def __init__(self, p: MeanEnergyParams) -> None:
        self.p = p

    def _db(self, waves: torch.Tensor) -> float:
        energy = waves.double().pow(2).mean(dim=-1)
        return float((10 * torch.log10(energy.clamp_min(1e-30))).clamp_min(self.p.floor_db).mean())

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        out = {"real_db": self._db(ctx.real_waves)}
        for kind, waves in ctx.generated.items():
            out[f"{kind}_db"] = self._db(waves)
            out[f"{kind}_minus_real_db"] = out[f"{kind}_db"] - out["real_db"]
        return out


class TonesParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    classes: int = Field(3, ge=1, le=64, description="number of classes (one tone each)")
    clips_per_class: int = Field(10, ge=3, le=100_000, description="clips per class (split 60/20/20)")
    sample_rate: int = Field(22050, gt=0, description="audio sample rate")
    seconds: float = Field(0.5, gt=0, le=60, description="clip length")
    frame_size: int = Field(32, ge=1, le=1024, description="native frame size in pixels")
    seed: int = Field(0, ge=0, description="seed of the amplitude/phase/noise draws")


class Tones(avgen.Dataset):
    """Class k: a sine at 220 * 2^(k/2) Hz with random amplitude/phase, frames of a class colour plus noise."""

    def __init__(self, p: TonesParams) -> None:
        self.p = p
        self.class_names = [f"tone{k}" for k in range(p.classes)]
        self.sample_rate, self.clip_seconds = p.sample_rate, p.seconds

    def prepare(self, progress=None) -> None:
        """Nothing to fetch: clips are computed on demand."""

    def clips(self, split: str) -> list[Clip]:
        n = self.p.clips_per_class
        bounds = {"train": (0, int(n * 0.6)), "val": (int(n * 0.6), int(n * 0.8)), "test": (int(n * 0.8), n)}
        lo, hi = bounds[split]
        return [Clip(id=f"tone{k}_{i:05d}", label=k, video=None, audio=None, start=0.0, duration=self.p.seconds,
                     group=f"tone{k}_{i:05d}", fingerprint=f"tones-seed{self.p.seed}")
                for k in range(self.p.classes) for i in range(lo, hi)]

    def _rng(self, clip: Clip) -> torch.Generator:
        return torch.Generator().manual_seed(self.p.seed * 1_000_003 + hash_id(clip.id))

    def load_audio(self, clip: Clip) -> torch.Tensor:
        g = self._rng(clip)
        t = torch.arange(round(self.p.seconds * self.p.sample_rate)) / self.p.sample_rate
        amp = 0.2 + 0.6 * torch.rand((), generator=g)
        phase = 2 * math.pi * torch.rand((), generator=g)
        freq = 220.0 * 2 ** (clip.label / 2)
        return (amp * torch.sin(2 * math.pi * freq * t + phase)).float()

    def load_frames(self, clip: Clip, fps: float, size: int) -> torch.Tensor:
        g = self._rng(clip)
        count = max(1, round(self.p.seconds * fps))
        hue = torch.tensor([(clip.label * 67) % 256, (clip.label * 131) % 256, (clip.label * 29) % 256], dtype=torch.float)
        noise = torch.randn(count, size, size, 3, generator=g) * 20
        return (hue + noise).clamp(0, 255).to(torch.uint8)


def hash_id(text: str) -> int:
    """A stable (not per-process randomised) hash of a clip id."""
    h = 0
    for ch in text.encode():
        h = (h * 131 + ch) % 1_000_000_007
    return h


class MeanColorParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fps: float = Field(10.0, gt=0, le=240, description="frames per second to sample")
    input_size: int = Field(32, ge=1, le=4096, description="frames are resized to this size")


class MeanColor(avgen.Encoder):
    """Mean and standard deviation of each colour channel, scaled to [0, 1]."""

    dim = 6

    def __init__(self, p: MeanColorParams) -> None:
        self.fps, self.input_size = p.fps, p.input_size

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.float().flatten(1, 2) / 255.0  # [N, H*W, 3]
        return torch.cat([x.mean(1), x.std(1)], dim=1)


class FrameLinearParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hidden: int = Field(32, ge=1, le=4096, description="hidden units of the per-frame MLP")


class FrameLinear(avgen.Generator):
    """Each output frame from the video frame shown at that time, by a small MLP: s'_i = MLP(x_i) (no memory)."""

    def __init__(self, p: FrameLinearParams, shape: avgen.GeneratorShape) -> None:
        super().__init__()
        self.steps = shape.steps
        self.mlp = torch.nn.Sequential(torch.nn.Linear(shape.feature_dim, p.hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(p.hidden, shape.rep_dim))

    def prepare(self, train: dict[str, torch.Tensor]) -> None:
        """Start as the video-blind mean: zero output weights, the mean training frame as the output bias."""
        with torch.no_grad():
            self.mlp[-1].weight.zero_()
            self.mlp[-1].bias.copy_(train["rep"].float().mean(dim=(0, 2)))

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        steps = avgen.replicate_to_steps(features, self.steps)  # [B, F, feature_dim]
        return {"rep": self.mlp(steps).transpose(1, 2)}  # [B, D, F]


class RepL1Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    per_clip: bool = Field(False, description="sum over bins and frames per clip (true) or average over them (false)")


class RepL1(avgen.Loss):
    """L1 between the generated and the real representation: a median-seeking regression loss."""

    def __init__(self, p: RepL1Params) -> None:
        self.per_clip = p.per_clip

    def __call__(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        error = (outputs["rep"].float() - batch["rep"].float()).abs()
        return error.flatten(1).sum(1).mean() if self.per_clip else error.mean()
