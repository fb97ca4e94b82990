"""The trained runs a server offers: each model loaded once per process, its exemplar bank, its test clips."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import torch

from avgen import AvgenError, read_json, read_recipe, run_name

METHODS = ("raw", "exemplar")


def find_runs(paths: tuple[Path, ...] | list[Path]) -> list[Path]:
    """Run directories with a trained model: each of ``paths`` that is one, else the runs under it (two levels)."""
    found: list[Path] = []
    for path in paths:
        path = Path(path)
        if not path.is_dir():
            raise AvgenError(f"{path}: not a folder; give run directories (as `avgen run` writes them) or a folder of them")
        if (path / "checkpoints").is_dir():
            found.append(path.resolve())
            continue
        inner = sorted({p.parents[1].resolve() for p in path.glob("*/checkpoints/best.safetensors")}
                       | {p.parents[1].resolve() for p in path.glob("*/*/checkpoints/best.safetensors")})
        if not inner:
            raise AvgenError(f"{path}: holds no trained run (no checkpoints/best.safetensors); train one with "
                             "`avgen run quickstart`")
        found.extend(inner)
    unique = list(dict.fromkeys(found))
    for run in unique:
        if not (run / "checkpoints" / "best.safetensors").is_file():
            raise AvgenError(f"{run}: no trained model (checkpoints/best.safetensors); train it with `avgen run RECIPE`")
    return unique


class ServedRun:
    """One run directory: its model (loaded on first use, then kept), exemplar bank and test clips."""

    def __init__(self, key: str, path: Path, device: torch.device) -> None:
        self.key, self.path, self.device = key, Path(path), device
        self.name = run_name(self.path)
        recipe = read_recipe(self.path)
        self.generator = str((recipe.get("generator") or {}).get("name", "?"))
        self._model_lock, self._data_lock = threading.Lock(), threading.Lock()
        self._model: Any = None
        self._dataset_clips: dict[str, Any] | None = None
        self._dataset: Any = None

    def describe(self) -> dict[str, Any]:
        return {"key": self.key, "name": self.name, "generator": self.generator, "path": str(self.path),
                "test_clips": len(self.test_clips())}

    def model(self) -> Any:
        """The run's ``avgen.SoundModel``, loaded once."""
        import avgen

        with self._model_lock:
            if self._model is None:
                self._model = avgen.load(self.path, self.device)
            return self._model

    def pending(self, method: str) -> str:
        """What the first generation of ``method`` must do first, for the progress line ('' when ready)."""
        if self._model is None:
            return " (loading the model)"
        if method == "exemplar" and not self._model.has_bank():
            return " (indexing the training clips, once per server)"
        return ""

    def encoder_key(self) -> str:
        """The encoder section of the run's recipe: runs with the same key share a video's features."""
        return json.dumps((read_recipe(self.path).get("encoder") or {}), sort_keys=True, default=str)

    def features(self, video: Path) -> torch.Tensor:
        """The encoder features of every frame of ``video`` (as ``SoundModel.sound`` reads them)."""
        return self.model().features(video)

    def by_events(self) -> bool:
        """Whether this run's model makes one sound per contact (it keeps a detector): what `avgen generate` does by
        default for such a run; else clip-length windows."""
        return self.model().detector is not None

    def generate(self, video: Path, method: str, console: Any, features: torch.Tensor | None = None,
                 ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The sound of ``video`` by this run's model, ``raw`` or ``exemplar``, as `avgen generate` makes it by
        default: one sound per contact for a model that keeps a detector (``predicted``: the contacts' most common
        material), else windows (``features``, when given, are not read again)."""
        model = self.model()
        if not self.by_events():
            return model.sound(video, exemplar=method == "exemplar", features=features, console=console)
        wave, summary = model.events(video, exemplar=method == "exemplar", console=console)
        from collections import Counter

        materials = Counter(c.get("material") for c in summary.get("contacts") or [] if c.get("material"))
        return wave, {**summary, "predicted": materials.most_common(1)[0][0] if materials else None}

    # ------------------------------------------------------------ test clips (for the listening test)

    def test_clips(self) -> dict[str, dict[str, Any]]:
        """Test clips whose raw and exemplar sounds the generate stage wrote: id -> index entry."""
        index = read_json(self.path / "generated" / "index.json")
        clips = index.get("clips") if isinstance(index, dict) else None
        out = {}
        for clip in clips if isinstance(clips, list) else []:
            if isinstance(clip, dict) and all((self.path / str(clip.get(m, ""))).is_file() for m in METHODS):
                out[str(clip["id"])] = clip
        return out

    def sound(self, clip_id: str, system: str) -> Path | None:
        """The wav of a test clip: ``raw``, ``exemplar`` or ``reference`` (the real sound, when the run kept it)."""
        if system == "reference":
            path = self.path / "generated" / "real" / f"{clip_id}.wav"
            return path if path.is_file() else None
        clip = self.test_clips().get(clip_id)
        return self.path / clip[system] if clip else None

    def dataset_clip(self, clip_id: str) -> Any:
        """The dataset's Clip (video, start, duration) of a test clip, or None when the dataset is not there."""
        from avgen import build_dataset, path_params

        with self._data_lock:
            if self._dataset_clips is None:
                self._dataset_clips = {}
                try:
                    recipe = self.trained_recipe()
                    if all(p.exists() for p in path_params("dataset", recipe.data).values()):
                        self._dataset = build_dataset(recipe)
                        self._dataset_clips = {c.id: c for c in self._dataset.clips("test")}
                except AvgenError:
                    self._dataset_clips = {}
            return self._dataset_clips.get(clip_id)

    def real_sound(self, clip_id: str) -> torch.Tensor | None:
        """The real sound of a test clip read from the dataset (for clips whose wav the run did not keep)."""
        clip = self.dataset_clip(clip_id)
        return None if clip is None else self._dataset.load_audio(clip)

    def trained_recipe(self) -> Any:
        from avgen import validate_recipe

        return validate_recipe(read_recipe(self.path), self.path / "recipe.toml").with_absolute_paths()

    def test_videos(self) -> list[Path]:
        """The source videos of the run's test clips (when its dataset is on disk), for the page's picker."""
        ids = list(self.test_clips())
        videos = []
        for clip_id in ids:
            clip = self.dataset_clip(clip_id)
            if clip is None:
                break
            if clip.video is not None and Path(clip.video) not in videos:
                videos.append(Path(clip.video))
        return videos
