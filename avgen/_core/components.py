"""The plugin contract: base classes for the eight kinds, the build context, the card and the contract check.

A plugin subclasses one of ``Dataset``, ``Encoder``, ``Representation``, ``Generator``, ``Loss``,
``Metric``, ``Detector`` or ``Index`` (or provides the same attributes), registers a factory ``factory(params, context)``
and gets a ``BuildContext`` with everything the core knows at build time. The core calls only
what is declared here: it never probes a component for optional attributes, so every default
lives on these classes. What a class must implement is marked ``@abstractmethod``; the classes are
not ABCs (a partial subclass may be made in a test), but ``check_contract`` refuses a built
component that leaves one unimplemented. Shapes: B = batch, T = samples, D = representation bins, F = frames
(t_s), N = video frames, C = classes.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Mapping

import torch
from torch import Tensor, nn

from avgen._core.card import KINDS, Card
from avgen._core.errors import AvgenError

__all__ = ["BASES", "KINDS", "BuildContext", "Card", "Clip", "Dataset", "Detector", "Encoder", "EvalContext",
           "ExemplarBank", "Generator", "GeneratorShape", "Index", "Loss", "Metric", "Representation", "SavedModel",
           "check_contract"]


@dataclass(frozen=True)
class GeneratorShape:
    """What the core tells a generator about the data."""

    feature_dim: int  # visual feature size
    rep_dim: int  # D
    steps: int  # F (t_s)
    num_classes: int


@dataclass(frozen=True)
class BuildContext:
    """Everything the core knows when it builds a component; the same type for every kind."""

    device: torch.device = torch.device("cpu")  # where models run
    shape: GeneratorShape | None = None  # generators: the data's shape
    representation: Any = None  # losses: the run's Representation (to decode s' to a waveform)
    run_dir: Path | None = None  # the run directory, when there is one

    def require_shape(self, who: str) -> GeneratorShape:
        if self.shape is None:
            raise AvgenError(f"{who}: a generator needs the data's shape in its build context (BuildContext(shape=...))")
        return self.shape


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


class Dataset:
    """Clips with classes, read from disk (or made). Subclasses set the three attributes and
    implement ``clips``, ``load_frames`` and ``load_audio``."""

    class_names: list[str]
    sample_rate: int  # of the waveforms load_audio returns
    clip_seconds: float
    provenance: str | None = None  # set by prepare where the data is a stand-in in this dataset's layout (synthetic)
    REQUIRED: ClassVar[tuple[str, ...]] = ("class_names", "sample_rate", "clip_seconds", "prepare", "clips",
                                           "load_frames", "load_audio", "skipped_rows", "contact_times")

    def prepare(self, progress: Any = None) -> None:
        """Make the data available (e.g. synthesize it) or raise AvgenError saying what to put where."""

    @abstractmethod
    def clips(self, split: str) -> list[Clip]:
        """Clips of a split: 'train', 'val' or 'test'."""

    @abstractmethod
    def load_frames(self, clip: Clip, fps: float, size: int) -> Tensor:
        """Frames of the clip sampled at fps, resized to size x size: uint8 [N, size, size, 3]."""

    @abstractmethod
    def load_audio(self, clip: Clip) -> Tensor:
        """Mono float32 waveform [T] at sample_rate, exactly round(duration * sample_rate) long."""

    def skipped_rows(self, split: str) -> list[str]:
        """Annotation rows left out of a split, one line each saying why (default: none)."""
        return []

    def contact_times(self, video: Path) -> list[float] | None:
        """The annotated contact times of one of its videos (seconds on the video's clock), which a recipe's
        ``[detector]`` learns from; None (the default): it learns from the onsets of the video's own sound."""
        return None


class Encoder:
    """Visual encoder: frames -> one feature vector per frame, no gradient.

    An encoder whose params ask for it (``tunes = True``) is tuned before the run's features are made: the
    featurize stage gives ``tune`` the training and validation clips' frames and classes (``TuneData``), the
    encoder fits part of its network on them and writes the result to the file it is given (the run keeps it as
    ``encoder.safetensors``, an exported model folder too); ``load_tuned`` reads it back wherever the model is
    loaded. ``tuned`` (the file's SHA-256) is part of the feature-cache key."""

    dim: int  # feature size (2048 for ResNet-50, 4096 for AlexNet fc7)
    fps: float  # frames per second to sample from the video
    input_size: int  # frames are resized to input_size x input_size
    device: torch.device = torch.device("cpu")  # where encode runs (autocast for bf16 is chosen for it)
    tunes: bool = False  # fitted on the run's training split before featurizing (``tune``)
    tuned: str | None = None  # SHA-256 of the tuned weights in use; None: as built
    REQUIRED: ClassVar[tuple[str, ...]] = ("dim", "fps", "input_size", "encode")

    @abstractmethod
    def encode(self, frames: Tensor) -> Tensor:
        """uint8 [N, H, W, 3] -> float32 [N, dim]."""

    def tune(self, data: "TuneData", path: Path) -> dict[str, Any]:
        """Fit on ``data``, write the tuned weights to ``path`` (atomically), use them from now on and set ``tuned``;
        returns what the run records (e.g. the chosen epoch and its validation accuracy)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be tuned")

    def load_tuned(self, path: Path) -> None:
        """Use the tuned weights ``tune`` wrote to ``path`` and set ``tuned``."""
        raise NotImplementedError(f"{type(self).__name__} cannot be tuned")


@dataclass
class TuneData:
    """What ``Encoder.tune`` learns from: per split ("train", "val"), an iterator over the clips' frames (uint8
    [frames per clip, H, W, 3] at the encoder's fps and size) and classes; clips that cannot be read are left out."""

    clips: Callable[[str], Iterator[tuple[Tensor, int]]]
    counts: dict[str, int]  # clips per split (an upper bound: unreadable ones are skipped)
    num_classes: int
    seed: int
    say: Callable[[str], None] = print  # a line of progress for the run's console and log


class Representation(nn.Module):
    """Audio representation: waveforms <-> [B, D, F]; moved to the device with ``.to``."""

    sample_rate: int
    dim: int  # D: 1025 for the STFT with n_fft 2048, 42 for the cochleagram
    phases: tuple[str, ...] = ("zero",)  # how decode may get a phase; 'given' takes the reference's
    frame_hop: int | None = None  # samples between frames when frames tile time evenly (windows then merge frames)
    # optional: True when decode(rep, phase, reference=w, length) with w shorter than the output continues the
    # sound w (its first samples); long videos are then decoded in segments that join without a phase jump
    continues_phase: bool = False
    REQUIRED: ClassVar[tuple[str, ...]] = ("sample_rate", "dim", "phases", "frame_hop", "frames", "encode", "decode", "to")

    @abstractmethod
    def frames(self, num_samples: int) -> int:
        """F for a waveform of num_samples samples (22 for 0.5 s at 22 050 Hz)."""

    @abstractmethod
    def encode(self, wave: Tensor, sample_rate: int | None = None) -> Tensor:
        """[B, T] -> [B, D, F]; resamples first when sample_rate differs."""

    @abstractmethod
    def decode(self, rep: Tensor, phase: str = "zero", reference: Tensor | None = None, length: int | None = None) -> Tensor:
        """[B, D, F] -> [B, T] with one of ``phases``; 'given' takes the phase of the reference waveform."""


class Generator(nn.Module):
    """Generator: ``forward(features [B, N, feature_dim]) -> {"rep": [B, D, F], ...}`` (s' is ``rep``).

    The hooks below have defaults that suit a plain regressor; override the ones you need.
    """

    # the keys of training_outputs that losses (Loss.needs) and metrics (Metric.needs) may ask for; an instance may
    # narrow it in __init__ when its params decide (e.g. "probs" only with a class head)
    provides: frozenset[str] = frozenset({"rep"})
    REQUIRED: ClassVar[tuple[str, ...]] = ("forward", "provides", "prepare", "training_outputs", "mean_outputs",
                                           "class_probabilities", "class_outputs")

    @abstractmethod
    def forward(self, features: Tensor) -> dict[str, Tensor]:
        """features [B, N, feature_dim] -> {"rep": s' [B, D, F], ...}."""

    def prepare(self, train: Mapping[str, Tensor]) -> None:
        """Called once before training with the training split, a dict of CPU tensors {"features" [M, N, dim],
        "rep" [M, D, F], "wave" [M, T], "label" [M]} (docs/plugins.md); e.g. statistics kept in buffers."""

    def training_outputs(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Outputs the losses score, for a batch ({"features", "rep", "wave", "label"}); default: ``self(features)``.

        Called in training mode for each step and in eval mode for the validation losses, so a
        generator whose loss needs more than its sampled output (e.g. a flow model's velocity at a
        random time) computes it here for both.
        """
        return dict(self(batch["features"]))

    def mean_outputs(self, train: Mapping[str, Tensor], count: int) -> dict[str, Tensor]:
        """What a predictor that ignores the video would output ``count`` times: the baseline every run prints.

        Default: the mean training representation. Add the outputs your losses score (e.g. a class prior).
        """
        rep = train["rep"].float().mean(0, keepdim=True)
        return {"rep": rep.expand(count, *rep.shape[1:])}

    def class_probabilities(self, outputs: Mapping[str, Tensor]) -> Tensor | None:
        """[B, C] class probabilities of each clip, for generators with a class head; default None."""
        return None

    def class_outputs(self, features: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Outputs (in eval mode) with the class forced to ``labels`` [B], for ``avgen generate --material``.

        A class-conditioned generator voices that class (can_lstm: its base sample) and returns
        class probabilities that say so. Default: an AvgenError, for generators without a class.
        """
        raise AvgenError(f"generator {type(self).__name__} has no class to force (--material needs a generator "
                         "with a class, such as can_lstm)")


class Loss:
    """Training loss: ``loss(outputs, batch) -> scalar``, a mean over the batch.

    ``outputs`` come from the generator (plus ``wave``, s' decoded, when ``needs_wave``); ``batch``
    holds ``features``, ``rep``, ``wave`` and ``label``.
    """

    needs_wave: bool = False  # the core decodes s' to a waveform (outputs["wave"]) for this loss
    needs: frozenset[str] = frozenset()  # the generator outputs it reads, matched against Generator.provides
    REQUIRED: ClassVar[tuple[str, ...]] = ("needs_wave", "needs", "__call__")

    @abstractmethod
    def __call__(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> Tensor:
        """A scalar tensor: the loss of the batch."""


@dataclass
class EvalContext:
    """Everything a metric may look at; fields a run does not have are None."""

    run_dir: Path
    sample_rate: int
    class_names: list[str]
    test_ids: list[str]
    test_labels: Tensor  # long [N]
    real_waves: Tensor  # float [N, T] real test audio
    real_reps: Tensor | None = None  # [N, D, F]
    train_labels: Tensor | None = None  # long [M]
    train_waves: Any = None  # callable () -> float [M, T], loaded on demand
    train_bank: Any = None  # callable () -> float [M, D]: time-averaged training reps, the retrieval bank (Eq. 8)
    predicted_reps: Tensor | None = None  # [N, D, F] the generator's s'
    predicted_labels: Tensor | None = None  # long [N]: argmax of Generator.class_probabilities (class head only)
    test_features: Tensor | None = None  # [N, frames, feature_dim] visual features of the evaluated clips
    train_features: Any = None  # callable () -> [M, frames, feature_dim]: visual features of the training clips
    generated: dict[str, Tensor] = field(default_factory=dict)  # "raw"/"exemplar" -> [N, T]
    retrieved: Tensor | None = None  # long [N, K] training-clip indices, best first
    retrieved_by_class: Tensor | None = None  # long [N, K]: the same, the predicted class's clips first (class head only)
    representation: Any = None
    device: torch.device = torch.device("cpu")
    extra: Mapping[str, Any] = field(default_factory=dict)
    test_clips: list[Clip] | None = None  # the evaluated clips, in test_ids order (where their frames and sound come from)
    dataset: Any = None  # the run's Dataset: dataset.load_frames(clip, fps, size) reads a clip's (or a wider window's) frames


@dataclass
class ExemplarBank:
    """Sounds that exemplar generation picks from (paper Eq. 8): one row per clip, with its provenance."""

    reps: Tensor  # [M, D] time-averaged representations, the retrieval keys
    waves: Tensor  # [M, T] the clips at the model's sample rate and clip length
    entries: list[dict[str, Any]]  # per row, what the output's record says about it (clip id, or file, offset, licence)
    source: str = ""  # where the bank came from (a run's training split, a model folder, a sound library)


@dataclass
class SavedModel:
    """A trained generator as ``avgen generate`` needs it: weights, the checkpoint's meta and an optional bank."""

    weights: dict[str, Tensor]  # the generator's state dict (base samples included)
    meta: dict[str, Any]  # recipe, class_names, shape, sample_rate, clip_seconds (a checkpoint's meta)
    bank: ExemplarBank | None = None  # exemplar sounds that travel with the model, when there are any


class Metric:
    """Evaluation metric: ``compute(ctx) -> {"name": number}``; may write figures to ctx.run_dir."""

    needs: frozenset[str] = frozenset()  # generator outputs it reads (e.g. "rep": generated sound), vs Generator.provides
    REQUIRED: ClassVar[tuple[str, ...]] = ("needs", "compute")

    @abstractmethod
    def compute(self, ctx: EvalContext) -> dict[str, float]:
        """{name: number}."""


class Detector:
    """Visual event detector: the frames of a video -> when something happens (e.g. a stick touches a surface).

    ``strength`` is the per-frame curve the events are picked from (plotted, and used by metrics
    that align sound with picture); ``detect`` returns the events. Frames are sampled at ``fps``
    and resized to ``input_size``; frame k shows time k / fps.
    """

    fps: float  # frames per second to sample from the video
    input_size: int  # frames are resized to input_size x input_size
    fit_summary: str | None = None  # set by ``fit``: what it kept, one line for the run's output (e.g. prior or head)
    annotated: dict[Path, list[float]] | None = None  # set before ``fit``: the contact times the dataset annotates
    REQUIRED: ClassVar[tuple[str, ...]] = ("fps", "input_size", "strength", "detect")

    @abstractmethod
    def strength(self, frames: Tensor) -> Tensor:
        """uint8 [N, H, W, 3] -> float32 [N]: how strongly frame k looks like an event (>= 0)."""

    @abstractmethod
    def detect(self, frames: Tensor) -> Tensor:
        """uint8 [N, H, W, 3] -> float32 [K, 2]: events as (seconds from the first frame, confidence in [0, 1]), by time."""

    def curves(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        """(strength, detect) of the same frames. A detector whose events are the peaks of its strength overrides
        it to compute the strength once."""
        return self.strength(frames), self.detect(frames)

    def fit(self, videos: list[Path], folder: Path) -> dict[str, Any]:
        """Learn from a run's training ``videos`` (their contact times: ``annotated`` where the run's dataset gives
        them, else a Greatest-Hits-layout times file beside the video, else the onsets of its own sound) and keep
        what was learned in ``folder``; returns the params (file names relative to ``folder``) that rebuild the
        fitted detector there. The recipe's ``[detector]`` section calls it in the fit stage. A detector that
        learns nothing keeps this default."""
        return {}


class Index:
    """The nearest bank rows of a query by cosine: the exemplar retrieval of paper Eq. 8.

    ``build(bank)`` indexes the rows [M, D] (the time-averaged representations of the training
    clips, or of a sound library), then ``search`` answers queries (the time-averaged s'). The
    recipe's ``[index]`` section names the component; without one the core builds ``exact``.
    """

    REQUIRED: ClassVar[tuple[str, ...]] = ("build", "search")

    @abstractmethod
    def build(self, bank: Tensor) -> "Index":
        """Index the rows of ``bank`` [M, D] (replacing any indexed before); returns the index itself."""

    @abstractmethod
    def search(self, query: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """(scores float32 [N, k'], indices long [N, k']) of the bank rows nearest each query row [N, D] by cosine,
        best first, k' = min(k, M); an approximate index may leave a slot empty (index -1, score -inf)."""


BASES: dict[str, type] = {"dataset": Dataset, "encoder": Encoder, "representation": Representation,
                          "generator": Generator, "loss": Loss, "metric": Metric, "detector": Detector, "index": Index}


def check_contract(kind: str, obj: Any, name: str, plugin: str) -> Any:
    """``obj`` if it has what its kind declares, else one AvgenError naming the plugin and what is missing."""
    base = BASES[kind]
    missing = [attr for attr in base.REQUIRED if not hasattr(obj, attr)]
    if missing:
        raise AvgenError(f"plugin '{plugin}': {kind} '{name}' does not follow the contract: no {', '.join(missing)} "
                         f"(subclass avgen.{base.__name__}, which has defaults)")
    # the marker @abstractmethod sets (what ABCMeta reads), looked up on the class
    abstract = [attr for attr in base.REQUIRED if getattr(getattr(type(obj), attr, None), "__isabstractmethod__", False)]
    if abstract:
        raise AvgenError(f"plugin '{plugin}': {kind} '{name}' does not follow the contract: {type(obj).__name__} does "
                         f"not implement {', '.join(abstract)} (avgen.{base.__name__} has no default for it)")
    declared = {"generator": "provides", "loss": "needs", "metric": "needs"}.get(kind)
    keys = getattr(obj, declared) if declared else frozenset()
    if not isinstance(keys, (set, frozenset)) or not all(isinstance(key, str) for key in keys):
        raise AvgenError(f"plugin '{plugin}': {kind} '{name}' declares {declared}={keys!r}; give a frozenset of output "
                         'names, e.g. frozenset({"rep"})')
    if kind == "generator" and not isinstance(obj, nn.Module):
        raise AvgenError(f"plugin '{plugin}': generator '{name}' must be a torch.nn.Module (subclass avgen.Generator)")
    if kind == "representation":
        phases = obj.phases
        if not isinstance(phases, tuple) or not phases or not all(isinstance(p, str) for p in phases):
            raise AvgenError(f"plugin '{plugin}': representation '{name}' declares phases={phases!r}; "
                             "give a non-empty tuple of names")
        if obj.frame_hop is not None and (not isinstance(obj.frame_hop, int) or obj.frame_hop <= 0):
            raise AvgenError(f"plugin '{plugin}': representation '{name}' declares frame_hop={obj.frame_hop!r}; "
                             "give a positive int or None")
    if kind == "loss" and not isinstance(obj.needs_wave, bool):
        raise AvgenError(f"plugin '{plugin}': loss '{name}' declares needs_wave={obj.needs_wave!r}; give True or False")
    return obj
