"""A trained model as one object: ``avgen.load(path)`` for a run directory or an exported model folder.

    import avgen
    model = avgen.load("runs/quickstart/pocan")             # or a folder `avgen export` wrote
    wave, summary = model.sound("clip.mp4")                   # raw sound [T] of the whole video
    wave, summary = model.sound("clip.mp4", exemplar=True)    # nearest training clips instead (paper Eq. 8)
    avgen.write_wav("clip.wav", wave, model.sample_rate)

The pieces are attributes (``recipe``, ``encoder``, ``representation``, ``generator``, ``class_names``,
``device``); the verbs make the sound of a video (``sound``, ``stream``), of frames already decoded
(``sound_of_frames``), with a forced class (``material=``) or from an exemplar bank (``exemplar=``,
``library=``). The CLI, the local page and the plugins use this object, never a tuple of its parts.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Sequence

import torch

from avgen._core.errors import AvgenError
from avgen._core.featurize import frames_per_clip


class SoundModel:
    """A trained generator with the encoder, representation and recipe it was trained with."""

    def __init__(self, *, recipe: Any, encoder: Any, representation: Any, generator: torch.nn.Module,
                 meta: dict[str, Any], device: torch.device, source: Path, run_dir: Path | None = None,
                 bank: Any = None) -> None:
        self.recipe, self.encoder, self.representation, self.generator = recipe, encoder, representation, generator
        self.meta, self.device, self.source, self.run_dir = meta, device, Path(source), run_dir
        self._exported_bank = bank  # the exemplar sounds an exported folder carries (None for a run)
        self._training_bank: Any = None
        self._detector: Any = None  # built on first use; False: the model keeps none
        self.detector_name: str | None = None  # its component name, once ``detector`` is read
        self._familiar: Any = None  # (reference, threshold) of the kept detector's training videos; False: none
        self._lock = threading.Lock()  # the local page generates from several threads
        self._precisions: dict[str, tuple[str, dict[str, Any]]] = {}  # video -> (precision of its frames, the check)

    def __repr__(self) -> str:
        return (f"SoundModel({self.recipe.generator.name!r} from {str(self.source)!r}, "
                f"{len(self.class_names)} classes, {self.sample_rate} Hz, {self.clip_seconds:g} s clips)")

    # ------------------------------------------------------------ what it is

    @property
    def name(self) -> str:
        """The generator's component name (e.g. 'can_lstm')."""
        return str(self.recipe.generator.name)

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.get("class_names") or [])

    @property
    def sample_rate(self) -> int:
        return int(self.meta.get("sample_rate") or self.representation.sample_rate)

    @property
    def clip_seconds(self) -> float:
        """The length of the clips the model was trained on (its window on a longer video)."""
        from avgen._core.loading import clip_seconds
        return clip_seconds(self.recipe, self.meta)

    def material(self, name: str) -> int:
        """The class index of material ``name`` (one line naming the model's classes when it has no such class)."""
        from avgen._core.loading import material_class
        self._require_class_head()
        return material_class(name, self.meta)

    def _require_class_head(self) -> None:
        """A forced material needs a generator with a class head (one that provides ``probs``): say so up front."""
        if "probs" not in self.generator.provides:
            raise AvgenError(f"generator '{self.recipe.generator.name}' has no class head to force a material with "
                             "(a generator that provides class probabilities, such as can_lstm, has one)")

    # ------------------------------------------------------------ exemplars

    def bank(self, library: str | Path | None = None, console: Any = None) -> Any:
        """The ``avgen.ExemplarBank`` exemplars come from: a folder of your own sounds (``library``), else the
        run's training clips (indexed once) or the sounds an exported folder carries."""
        from avgen._core.loading import exemplar_bank, library_bank
        if library is not None:
            return library_bank(Path(library), self.representation, dict(self.meta["recipe"]["representation"]),
                                self.clip_seconds, console)
        if self.run_dir is None:
            if self._exported_bank is None:
                raise AvgenError("--exemplar: this model folder was exported without exemplar sounds; "
                                 "give --library SFX_DIR, or use --raw")
            return self._exported_bank
        with self._lock:
            if self._training_bank is None:
                self._training_bank = exemplar_bank(self.recipe, self.run_dir, self.device, self.encoder,
                                                    self.representation, console=console)
            return self._training_bank

    def index(self, rows: torch.Tensor) -> Any:
        """The recipe's retrieval index (its ``[index]`` section; without one ``exact``) built over ``rows`` [M, D]:
        what exemplars are searched with, by windows and by events alike."""
        from avgen._core.retrieval import build_index

        return build_index(self.recipe.index, rows)

    def has_bank(self) -> bool:
        """Whether exemplars are ready without further work (indexed already, or carried by the folder)."""
        return self._training_bank is not None or self._exported_bank is not None

    def training_split(self, console: Any = None) -> Any:
        """The run's training split (features, representations, waves, labels) from the cache or its dataset."""
        from avgen._core.loading import training_split
        if self.run_dir is None:
            raise AvgenError(f"{self.source}: an exported model folder carries no training split; load the run directory")
        return training_split(self.recipe, self.run_dir, self.device, self.encoder, self.representation, console)

    # ------------------------------------------------------------ sound

    def features(self, video: str | Path) -> torch.Tensor:
        """Encoder features [frames, dim] of every frame of ``video`` at the encoder's fps (what ``sound`` reads)."""
        from avgen._core.videosound import video_features
        from avgen._core.media import probe
        duration = max(float(probe(Path(video)).duration), self.clip_seconds)
        return video_features(self.encoder, Path(video), duration, precision=self.frames_precision(video))

    def frames_precision(self, video: str | Path) -> str:
        """'bf16' or 'fp32': how the frames of ``video`` are encoded, decided once per video as ``sound`` decides
        it (the run's featurize precision, or bf16 where the generator's output on the video's first window
        agrees; ``frames_check(video)`` gives what that check measured)."""
        from avgen._core.videosound import frames_precision
        key = _video_key(video)
        if key not in self._precisions:
            per_clip = frames_per_clip(self.clip_seconds, self.encoder.fps)
            self._precisions[key] = frames_precision(self.meta, self.device, self.encoder, self.generator, Path(video),
                                                     per_clip, self.recipe.featurize.precision)
        return self._precisions[key][0]

    def frames_check(self, video: str | Path) -> dict[str, Any]:
        """How the frames of ``video`` were encoded: ``encoder_precision`` and what the check measured; empty
        where none of them has been encoded yet (this runs no check)."""
        decided = self._precisions.get(_video_key(video))
        return {} if decided is None else {"encoder_precision": decided[0], **decided[1]}

    def stream(self, video: str | Path, *, exemplar: bool = False, library: str | Path | None = None,
               bank: Any = None, material: str | int | None = None, features: torch.Tensor | None = None,
               hop_fraction: float = 0.5, console: Any = None) -> Any:
        """The sound of ``video`` as a stream (``VideoSound``: ``blocks()`` yields it in order, memory flat in the
        video's length; ``summary`` once done). See ``sound`` for the options."""
        from avgen._core.videosound import VideoSound
        index = self._class_index(material)  # a material it cannot force: said before any frame is read
        if bank is None and (exemplar or library is not None):
            bank = self.bank(library, console)
        if features is None:
            self.frames_precision(video)  # decided (checked where it has to be) before the frames are read
        # given features: the precision ``features`` made them in, where it did
        precision = self._precisions.get(_video_key(video), ("fp32", {}))
        return VideoSound(Path(video), self.recipe, self.encoder, self.representation, self.generator, self.meta,
                          self.device, hop_fraction=hop_fraction, exemplar_bank=bank,
                          material=index, features=features, precision=precision)

    def sound(self, video: str | Path, *, exemplar: bool = False, library: str | Path | None = None,
              bank: Any = None, material: str | int | None = None, features: torch.Tensor | None = None,
              hop_fraction: float = 0.5, console: Any = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """(sound [T] in [-1, 1] at ``sample_rate``, summary) of a whole video: clip-length windows every
        ``hop_fraction`` of a clip, generated and overlap-added.

        ``exemplar``: each window takes its nearest training clip (paper Eq. 8) instead of the raw sound;
        ``library``: ... its nearest clip of a folder of your own sounds; ``bank``: ... of an ``avgen.ExemplarBank``
        already made (``bank()``, kept for many videos); ``material`` (a class name or index)
        forces the generator's class; ``features`` (from ``features(video)``) skip reading the frames again.
        """
        job = self.stream(video, exemplar=exemplar, library=library, bank=bank, material=material, features=features,
                          hop_fraction=hop_fraction, console=console)
        from avgen._core.videosound import within_unit
        return within_unit(torch.cat(list(job.blocks()))), job.summary

    def sound_of_frames(self, frames: torch.Tensor, *, material: str | int | None = None,
                        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(raw sound [samples], generator outputs) of one clip's frames, uint8 [N, H, W, 3] as
        ``avgen.read_frames`` gives them (other sizes are resized to the encoder's input), N frames spread
        over the clip."""
        from avgen._core.generate import predict
        from avgen._core.videosound import encoder_precision, within_unit
        from avgen._core.media import fit_frames
        from avgen._core.precision import autocast_for

        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8 or frames.shape[0] == 0:
            raise AvgenError(f"sound_of_frames: frames must be uint8 [N, H, W, 3], got {frames.dtype} {list(frames.shape)}")
        size = self.encoder.input_size
        if tuple(frames.shape[1:3]) != (size, size):
            scaled = torch.nn.functional.interpolate(frames.permute(0, 3, 1, 2).float(), size=(size, size),
                                                     mode="bilinear", align_corners=False, antialias=True)
            frames = scaled.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
        with torch.no_grad(), autocast_for(encoder_precision(self.meta, self.device), self.device):
            features = self.encoder.encode(frames).float()
        per_clip = frames_per_clip(self.clip_seconds, self.encoder.fps)
        window = fit_frames(features, per_clip)[None]
        index = self._class_index(material)
        labels = None if index is None else torch.tensor([index])
        outputs = predict(self.generator, window, self.device, labels=labels)
        return within_unit(self.raw_sound(outputs["rep"])[0]), outputs

    def window_outputs(self, video: str | Path, times: Sequence[float], material: str | int | None = None,
                       ) -> dict[str, torch.Tensor]:
        """The generator's outputs for the clip-length windows of ``video`` centred on each of ``times`` (seconds),
        with the class forced to ``material`` when given. Only the frames of the windows are encoded when they
        are fewer than half the video's (a few contacts in a long video cost what they hold)."""
        from avgen._core.generate import predict
        index = self._class_index(material)
        windows = self._window_features(Path(video), list(times))
        labels = None if index is None else torch.full((windows.shape[0],), index, dtype=torch.long)
        return predict(self.generator, windows, self.device, labels=labels)

    def _window_features(self, video: Path, times: list[float]) -> torch.Tensor:
        """Encoder features [K, frames per clip, dim] of the windows centred on ``times`` (clamped to the video)."""
        from avgen._core.videosound import video_features
        from avgen._core.media import FrameReader, probe
        fps = self.encoder.fps
        per_clip = frames_per_clip(self.clip_seconds, fps)
        total = frames_per_clip(max(float(probe(video).duration), self.clip_seconds), fps)  # as ``features`` reads
        firsts = window_starts(times, fps, per_clip, total)
        needed = sorted({f + i for f in firsts for i in range(per_clip)})
        if total < 2 * per_clip or len(needed) > total / 2:
            return window_features(self.features(video), times, fps, per_clip)
        runs: list[list[int]] = []  # consecutive frame indices, each encoded once
        for k in needed:
            if runs and k == runs[-1][1]:
                runs[-1][1] = k + 1
            else:
                runs.append([k, k + 1])
        rows: dict[int, torch.Tensor] = {}
        with FrameReader(video, fps, self.encoder.input_size) as reader:
            for first, end in runs:
                feats = video_features(self.encoder, video, 0.0, first=first, count=end - first, reader=reader,
                                       precision=self.frames_precision(video))
                rows.update({first + i: row for i, row in enumerate(feats)})
        return torch.stack([torch.stack([rows[f + i] for i in range(per_clip)]) for f in firsts])

    # ------------------------------------------------------------ events

    @property
    def detector(self) -> Any:
        """The contact detector kept with the model (``detector.json`` in the run or model folder, written by
        ``avgen timing fit --run``), built on first use; None when the model has none."""
        if self._detector is None:
            from avgen._core.events import kept_detector

            self._detector, self.detector_name = kept_detector(self.source) or (False, None)
        return self._detector or None

    def familiarity(self, video: str | Path) -> dict[str, float] | None:
        """How like the training videos ``video`` looks: ``{"familiarity": s, "familiar_threshold": t}``, where s is
        the median over ``CHECK_FRAMES`` evenly spaced frames of the encoder features' cosine to the nearest kept
        training frame, and t the share of the validation clips' level below which the video is unlike them;
        None when the model keeps no reference (no detector fitted in its fit stage)."""
        from avgen._core.events import CHECK_FRAMES, kept_familiar, similarity
        from avgen._core.media import probe, read_frames

        if self._familiar is None:
            self._familiar = kept_familiar(self.source) or False
        if not self._familiar:
            return None
        reference, threshold = self._familiar
        duration = float(probe(Path(video)).duration)
        fps, size = self.encoder.fps, self.encoder.input_size
        frames = torch.cat([read_frames(video, fps, size, start=duration * (k + 0.5) / CHECK_FRAMES, duration=1.0 / fps)[:1]
                            for k in range(CHECK_FRAMES)])
        return {"familiarity": round(similarity(self.encoder.encode(frames), reference), 4),
                "familiar_threshold": round(threshold, 4)}

    def detector_for(self, video: str | Path) -> tuple[Any, str, dict[str, Any]]:
        """(detector, how the summary names it, what decided it) for ``video`` by events: the detector kept with
        the model, or the events plugin's fallback where the model keeps none (as ``avgen generate --mode events``)
        or where the video is unlike the training videos the kept one was fitted on (``familiarity``): a detector
        fitted on rendered hits finds few contacts in real footage."""
        from avgen._core.events import default_detector, fallback_detector
        from avgen._core.plugins import create

        kept = self.detector
        if kept is None:
            name, detector = fallback_detector(f"{self.source}: the model",
                                               "fit one with `avgen timing fit --run RUN_DIR`, or pass a detector")
            return detector, name, {}
        info, fallback = self.familiarity(video) or {}, default_detector()
        if info and info["familiarity"] < info["familiar_threshold"] and fallback not in (None, self.detector_name):
            return create("detector", fallback), (
                f"{fallback} (the video is unlike the training videos: visual similarity {info['familiarity']:.2f}, "
                f"below {info['familiar_threshold']:.2f}; the kept {self.detector_name} applies to videos like "
                "those)"), info
        return kept, f"{self.detector_name} (kept with the model)", info

    def events(self, video: str | Path, *, detector: Any = None, exemplar: bool = False,
               library: str | Path | None = None, bank: Any = None, material: str | int | None = None,
               console: Any = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """(sound [T] in [-1, 1], summary) of ``video`` driven by events: the contacts ``detector`` (default: the
        model's own, see ``detector``) finds, one sound per contact (raw, or with ``exemplar``/``library``/``bank``
        the nearest exemplar of the contact's material), silence elsewhere. A plugin makes it (the
        ``sound_of_events`` hook; the timing plugin's places one sound per contact, docs/timing.md)."""
        from avgen._core.events import require_events, sound_of_events

        require_events("SoundModel.events")
        name, info = None, {}
        if detector is None:
            detector, name, info = self.detector_for(video)
        if bank is None and (exemplar or library is not None):
            bank = self.bank(library, console)
        wave, summary = sound_of_events(self, Path(video), detector=detector, detector_name=name, bank=bank,
                                        material=self._class_index(material))
        return wave, {**summary, **info}

    def raw_sound(self, rep: torch.Tensor) -> torch.Tensor:
        """Clip waveforms [N, samples] decoded from generated representations [N, D, F] (the raw sound)."""
        from avgen._core.build import raw_phase
        from avgen._core.generate import decode
        return decode(self.representation, rep, raw_phase(self.recipe, self.representation),
                      round(self.clip_seconds * self.sample_rate), self.device)

    def class_probabilities(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The generator's class probabilities [B, C] in ``outputs`` (None when it has no class head)."""
        return self.generator.class_probabilities(outputs)

    def _class_index(self, material: str | int | None) -> int | None:
        if material is None:
            return None
        if isinstance(material, int):
            self._require_class_head()
            if not 0 <= material < max(1, len(self.class_names)):
                raise AvgenError(f"material {material}: the model has {len(self.class_names)} classes")
            return material
        return self.material(material)


def window_features(features: torch.Tensor, times: list[float], fps: float, frames_per_clip: int) -> torch.Tensor:
    """Feature windows [K, frames_per_clip, dim] centred on each time (clamped to the video)."""
    from avgen._core.media import fit_frames
    if features.shape[0] < frames_per_clip:
        features = fit_frames(features, frames_per_clip)
    firsts = window_starts(times, fps, frames_per_clip, features.shape[0])
    return torch.stack([features[f:f + frames_per_clip] for f in firsts]) if firsts else \
        features.new_zeros(0, frames_per_clip, features.shape[1])


def window_starts(times: list[float], fps: float, frames_per_clip: int, frames: int) -> list[int]:
    """The first frame of the clip-length window centred on each time, clamped inside ``frames`` frames."""
    return [min(max(0, round(t * fps - frames_per_clip / 2)), frames - frames_per_clip) for t in times]


def _video_key(video: str | Path) -> str:
    """The key of a video in ``SoundModel``'s per-video precision decisions."""
    return str(Path(video).resolve())


def is_run_dir(path: Path) -> bool:
    """A folder `avgen run` made (it has a resolved recipe and a checkpoints folder)."""
    return (path / "recipe.toml").is_file() and (path / "checkpoints").is_dir()


def load(path: str | Path, device: str | torch.device = "auto", settings: Sequence[str] = ()) -> SoundModel:
    """The trained model in ``path``: a run directory (``avgen run``) or a model folder (``avgen export``).

    ``device``: 'auto' (CUDA when available), 'cpu', 'cuda' or a ``torch.device``; ``settings``:
    generation settings as ``avgen generate --set`` takes them, e.g. ``["generator.steps=4"]``.
    """
    path = Path(path)
    if not path.is_dir():
        raise AvgenError(f"{path}: no such folder; give a run directory (avgen run) or a model folder (avgen export)")
    return (load_run if is_run_dir(path) else load_folder)(path, device, settings)


def load_run(path: str | Path, device: str | torch.device = "auto", settings: Sequence[str] = ()) -> SoundModel:
    """The best model of the run directory ``path`` (``avgen generate --run``)."""
    from avgen._core.loading import load_trained
    path, dev = Path(path), _device(device)
    recipe, encoder, representation, generator, meta = load_trained(path, dev, tuple(settings))
    return SoundModel(recipe=recipe, encoder=encoder, representation=representation, generator=generator,
                      meta=meta, device=dev, source=path, run_dir=path)


def load_folder(path: str | Path, device: str | torch.device = "auto", settings: Sequence[str] = ()) -> SoundModel:
    """The model of a folder ``avgen export`` wrote (``avgen generate --model``)."""
    from avgen._core.loading import load_model_folder
    path, dev = Path(path), _device(device)
    recipe, encoder, representation, generator, meta, bank = load_model_folder(path, dev, tuple(settings))
    return SoundModel(recipe=recipe, encoder=encoder, representation=representation, generator=generator, meta=meta,
                      device=dev, source=path, bank=bank)


def _device(device: str | torch.device) -> torch.device:
    from avgen._core.distributed import resolve_device

    return device if isinstance(device, torch.device) else resolve_device(device)
