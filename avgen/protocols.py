"""What each kind of component must provide: the contracts between plugins and the runner.

These are structural (``typing.Protocol``): a plugin's class needs the attributes and
methods, not a base class. Shapes use B = batch, T = samples, D = representation bins,
F = representation frames (t_s), N = frames of video, C = classes.

Factories are called as ``factory(params, **context)``; the context each kind receives is
listed on its protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class Clip:
    """One example of a dataset: a time window of a media file with a class."""

    id: str  # unique within the dataset, stable across runs (e.g. "vid001_hit003")
    label: int  # class index into Dataset.class_names; -1 when unknown
    video: Path | None  # file holding the frames (None for audio-only datasets)
    audio: Path | None  # file holding the sound (may equal video)
    start: float  # seconds from the start of the file
    duration: float  # seconds
    group: str = ""  # the source video id; splits never share a group
    fingerprint: str = ""  # identity of the source files (hash or size+mtime), for the cache


@runtime_checkable
class Dataset(Protocol):
    """Context: ``root`` is not passed; datasets read their location from their Params.

    Optional: ``skipped_rows(split) -> list[str]``, the annotation rows left out of a split (one line
    each saying why, e.g. a time of inf); the runner warns about them and lists them in ``skipped.txt``.
    """

    class_names: list[str]
    sample_rate: int  # of the waveforms load_audio returns
    clip_seconds: float

    def prepare(self, progress: Any = None) -> None:
        """Make the data available (e.g. synthesize it) or raise AvgenError saying what to put where."""

    def clips(self, split: str) -> list[Clip]:
        """Clips of a split: 'train', 'val' or 'test'."""

    def load_frames(self, clip: Clip, fps: float, size: int) -> torch.Tensor:
        """Frames of the clip sampled at fps, resized to size x size: uint8 [N, size, size, 3]."""

    def load_audio(self, clip: Clip) -> torch.Tensor:
        """Mono float32 waveform [T] at sample_rate, exactly round(duration * sample_rate) long."""


@runtime_checkable
class Encoder(Protocol):
    """Visual encoder. Context: ``device`` (torch.device)."""

    dim: int  # feature size (2048 for ResNet-50, 4096 for AlexNet fc7)
    fps: float  # frames per second to sample from the video
    input_size: int  # frames are resized to input_size x input_size

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> float32 [N, dim], no gradient."""


@runtime_checkable
class Representation(Protocol):
    """Audio representation. Context: none. Behaves like an nn.Module (``.to(device)``)."""

    sample_rate: int
    dim: int  # D: 1025 for the STFT with n_fft 2048, 42 for the cochleagram

    def frames(self, num_samples: int) -> int:
        """F for a waveform of num_samples samples (22 for 0.5 s at 22 050 Hz)."""

    def encode(self, wave: torch.Tensor, sample_rate: int | None = None) -> torch.Tensor:
        """[B, T] -> [B, D, F]; resamples first when sample_rate differs."""

    def decode(
        self,
        rep: torch.Tensor,
        phase: str = "griffin_lim",
        reference: torch.Tensor | None = None,
        length: int | None = None,
    ) -> torch.Tensor:
        """[B, D, F] -> [B, T]; phase 'given' takes the phase of the reference waveform."""


@dataclass(frozen=True)
class GeneratorShape:
    """What the runner tells a generator factory about the data (context key ``shape``)."""

    feature_dim: int  # visual feature size
    rep_dim: int  # D
    steps: int  # F (t_s)
    num_classes: int


@dataclass
class EvalContext:
    """Everything a metric may look at; fields a run does not have are None."""

    run_dir: Path
    sample_rate: int
    class_names: list[str]
    test_ids: list[str]
    test_labels: torch.Tensor  # long [N]
    real_waves: torch.Tensor  # float [N, T] real test audio
    real_reps: torch.Tensor | None = None  # [N, D, F]
    train_labels: torch.Tensor | None = None  # long [M]
    train_waves: Any = None  # callable () -> float [M, T], loaded on demand
    train_bank: Any = None  # callable () -> float [M, D]: time-averaged training reps, the retrieval bank (Eq. 8)
    predicted_reps: torch.Tensor | None = None  # [N, D, F] the generator's s'
    generated: dict[str, torch.Tensor] = field(default_factory=dict)  # "raw"/"exemplar" -> [N, T]
    retrieved: torch.Tensor | None = None  # long [N, K] training-clip indices, best first
    representation: Any = None
    device: torch.device = torch.device("cpu")
    extra: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Metric(Protocol):
    """Evaluation metric. Context: none."""

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        """Flat mapping of metric names to numbers (e.g. {'R@1': 0.3}); may write figures to ctx.run_dir."""


@runtime_checkable
class Generator(Protocol):
    """Generator: a torch.nn.Module. Context: ``shape`` (GeneratorShape).

    ``forward(features [B, N, feature_dim]) -> dict`` with at least ``rep`` [B, D, F] (s');
    class-based generators add ``logits`` [B, F, C] and ``probs`` [B, C]. Frames are
    replicated to F steps inside the generator with ``avgen.sequence.replicate_to_steps``.
    """

    uses_base_samples: bool

    def set_base_samples(self, reps: torch.Tensor, labels: torch.Tensor) -> None:
        """Compute per-class mean representations A_j from the training split (stored as a buffer)."""


@runtime_checkable
class Loss(Protocol):
    """Training loss. Context: ``representation`` (to decode s' to a waveform).

    ``loss(outputs, batch) -> scalar tensor``: outputs from the generator (plus ``wave``, the
    decoded s', when ``needs_wave``); batch holds ``features``, ``rep``, ``wave``, ``label``.
    """

    needs_wave: bool

    def __call__(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> torch.Tensor: ...
