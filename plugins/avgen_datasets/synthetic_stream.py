"""synthetic_stream: synthetic_hits-style clips computed on demand, with no media files written.

Each clip shows one surface (its material is the class) being hit and scratched; frames and
sound come from the same renderer and modal synthesis as synthetic_hits, seeded by
(seed, clip index) alone, so any clip can be produced in any process, in any order. Meant for
scale tests: a VIG-sized set (16 000 clips of 10 s at 8 kHz) costs no disk until featurized.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from avgen import AvgenError, BuildContext, Clip, Dataset

from avgen_datasets.base import SPLITS
from avgen_datasets.materials import MATERIALS
from avgen_datasets.synthetic_hits import SynthesisParams, material_sequence, plan_segments

GENERATOR_VERSION = "1"
NATIVE_FPS = 30  # contacts fall on frames of a 30 fps video, as in synthetic_hits
ID_PREFIX = "stream"


class SyntheticStreamParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    clips: int = Field(16_000, ge=3, le=10_000_000, description="number of clips (the VIG subset has about 16 000)")
    clip_seconds: float = Field(10.0, ge=0.5, le=600, description="length of each clip in seconds (VIG: 10)")
    sample_rate: int = Field(8000, ge=1000, le=192_000, description="sample rate of the synthesized audio (VIG: 8000)")
    classes: int = Field(17, ge=1, le=len(MATERIALS), description="number of materials used (the first K of the 17)")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed (same seed, same clips)")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="fraction of clips in the val split")
    test_fraction: float = Field(0.1, gt=0, lt=1, description="fraction of clips in the test split")


class SyntheticStream(Dataset):
    """The Dataset: clips have no files (video and audio are None); frames and audio are rendered per call."""

    def __init__(self, params: SyntheticStreamParams) -> None:
        if params.val_fraction + params.test_fraction >= 1:
            raise AvgenError(f"synthetic_stream: val_fraction + test_fraction = "
                             f"{params.val_fraction + params.test_fraction:g} leaves no training clips; keep it below 1")
        self.params = params
        self.class_names = list(MATERIALS[: params.classes])
        self.sample_rate = params.sample_rate
        self.clip_seconds = params.clip_seconds
        self._splits: dict[str, list[Clip]] | None = None

    def prepare(self, progress: Any = None) -> None:
        """Nothing to write: clips are computed when loaded."""

    def clips(self, split: str) -> list[Clip]:
        if split not in SPLITS:
            raise AvgenError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")
        if self._splits is None:
            self._splits = self._build_splits()
        return list(self._splits[split])

    def _build_splits(self) -> dict[str, list[Clip]]:
        p = self.params
        rng = np.random.default_rng([p.seed, 0xC1A55])
        materials = material_sequence(p.clips, self.class_names, rng)  # every class about equally often
        order = rng.permutation(p.clips)
        num_test = max(1, round(p.test_fraction * p.clips))
        num_val = round(p.val_fraction * p.clips)
        parts = {"test": order[:num_test], "val": order[num_test:num_test + num_val], "train": order[num_test + num_val:]}
        fingerprint = f"synthetic_stream-v{GENERATOR_VERSION}"
        out = {}
        for split, indices in parts.items():
            out[split] = [
                Clip(id=clip_id(int(i)), label=self.class_names.index(materials[i]), video=None, audio=None,
                     start=0.0, duration=p.clip_seconds, group=clip_id(int(i)), fingerprint=fingerprint)
                for i in sorted(indices)
            ]
        return out

    def _scene(self, clip: Clip) -> list:
        """The clip's one segment (its material and actions), seeded by (seed, index) alone."""
        settings = SynthesisParams.model_construct(  # plan_segments reads only these four fields
            video_seconds=self.params.clip_seconds, segments=1, fps=NATIVE_FPS, none_fraction=0.0)
        rng = np.random.default_rng([self.params.seed, clip_index(clip), 0])
        return plan_segments(settings, [self.class_names[clip.label]], rng)

    def load_frames(self, clip: Clip, fps: float, size: int) -> torch.Tensor:
        """uint8 [round(duration * fps), size, size, 3], rendered at size (no resize)."""
        from avgen_datasets.synthesis import SceneRenderer

        count = max(1, round(clip.duration * fps))
        rng = np.random.default_rng([self.params.seed, clip_index(clip), 1])
        renderer = SceneRenderer(self._scene(clip), size, fps, rng)
        return torch.from_numpy(np.stack(list(renderer.frames(count))))

    def load_audio(self, clip: Clip) -> torch.Tensor:
        """float32 [round(duration * sample_rate)]: room noise plus the modal synthesis of each contact."""
        from avgen_datasets.synthesis import render_audio

        rng = np.random.default_rng([self.params.seed, clip_index(clip), 2])
        wave = render_audio(self._scene(clip), clip.duration, self.sample_rate, rng)
        return torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))


def clip_id(index: int) -> str:
    return f"{ID_PREFIX}{index:07d}"


def clip_index(clip: Clip) -> int:
    """The clip's index in the dataset, read from its id."""
    if not clip.id.startswith(ID_PREFIX) or not clip.id[len(ID_PREFIX):].isdigit():
        raise AvgenError(f"clip '{clip.id}' is not a synthetic_stream clip (ids look like {clip_id(0)})")
    return int(clip.id[len(ID_PREFIX):])


def make_synthetic_stream(params: SyntheticStreamParams, context: BuildContext) -> SyntheticStream:
    return SyntheticStream(params)
