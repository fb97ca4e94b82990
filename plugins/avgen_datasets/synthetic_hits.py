"""synthetic_hits: a seeded procedural dataset WRITTEN in the Greatest Hits layout, then read by it.

Each video looks at a few surfaces in turn (one material per segment) while a stick hits or
scratches them; ``{id}_times.txt`` records every contact. ``prepare()`` writes the folder when
it is missing or was written with other settings.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from avgen import (AvgenError, BuildContext, folder_error, named_as, staging_folder, write_json, write_text, write_video,
                   write_wav)

from avgen_datasets.greatest_hits import SYNTHETIC_MANIFEST, GreatestHits, GreatestHitsParams
from avgen_datasets.materials import MATERIALS

if TYPE_CHECKING:
    from avgen_datasets.synthesis import Action, Segment

GENERATOR_VERSION = "1"


class SynthesisParams(BaseModel):
    """What to generate (changing any of these regenerates the folder)."""

    model_config = ConfigDict(extra="forbid")

    videos: int = Field(24, ge=2, le=100_000, description="number of videos to generate")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of the generator (same seed, same files)")
    classes: int = Field(17, ge=1, le=len(MATERIALS), description="number of materials used (the first K of the 17)")
    fps: int = Field(30, ge=1, le=120, description="frame rate of the written videos")
    size: int = Field(128, ge=32, le=1024, multiple_of=2, description="width and height of the written videos in pixels")
    video_seconds: float = Field(10.0, gt=1, le=3600, description="length of each video in seconds")
    segments: int = Field(4, ge=1, le=1000, description="surfaces shown per video (one material each)")
    audio_rate: int = Field(22050, ge=8000, le=192_000, description="sample rate of the written wav files")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="fraction of videos listed in test.txt")
    none_fraction: float = Field(0.05, ge=0, lt=1, description="fraction of contacts annotated with material None (skipped by the loader)")
    difficulty: Literal["easy", "hard"] = Field(
        "easy", description="'easy': one look per material; 'hard': several looks per material, looks shared across "
                            "materials, camera, lighting and occlusion changes, contacts partly out of frame (docs/datasets.md)")

    def manifest_settings(self) -> dict[str, Any]:
        """The settings a folder's manifest records: the easy preset's as before difficulty existed; the hard
        preset's with its knobs, so a folder written with other knobs is regenerated."""
        if self.difficulty == "easy":
            return self.model_dump(exclude={"difficulty"})
        from dataclasses import asdict

        from avgen_datasets.synthesis import HARD

        return {**self.model_dump(), "hard_scene": json.loads(json.dumps(asdict(HARD)))}


class SyntheticHitsParams(SynthesisParams):
    """Generator settings plus where to write and how the Greatest Hits loader cuts clips."""

    root: Path = Field(Path("data/synthetic_hits"), description="folder to write (relative to the working directory) and read")
    clip_seconds: float = Field(0.5, ge=0.01, le=600, description="length of each clip in seconds")
    offset: float = Field(-0.1, ge=-600, le=600, description="clip start relative to the hit time in seconds")
    sample_rate: int = Field(22050, ge=1000, le=384_000, description="sample rate of the waveforms load_audio returns")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="fraction of training videos held out for validation")
    quiet_per_video: int = Field(0, ge=0, le=1000, description="also this many clips per video away from every hit, "
                                 "labelled with an extra class 'silence' (as greatest_hits)")


def plan_segments(settings: SynthesisParams, materials: list[str], rng: np.random.Generator) -> list[Segment]:
    """Segments of one video with their actions at frame-aligned times, at least 0.5 s apart."""
    from avgen_datasets.synthesis import HARD, Action, Segment, choose_look

    hard = settings.difficulty == "hard"
    length = settings.video_seconds / settings.segments
    segments = []
    for i, material in enumerate(materials):
        seg = Segment(material, i * length, (i + 1) * length)
        if hard:
            seg.look = choose_look(HARD, material, tuple(MATERIALS[: settings.classes]), rng)
        t = seg.start + rng.uniform(0.25, 0.35)
        while t <= seg.end - 0.45:
            frame_time = round(t * settings.fps) / settings.fps  # the contact happens on a frame
            kind = "scratch" if rng.random() < 0.25 else "hit"
            seg.actions.append(Action(
                time=frame_time, kind=kind, reaction="rebound" if rng.random() < 0.5 else "static",
                x=float(rng.uniform(0.3, 0.6)), y=float(rng.uniform(0.3, 0.7)),
                force=float(rng.uniform(0.4, 1.0)), pitch=float(rng.uniform(0.95, 1.05)),
                length=float(rng.uniform(0.2, 0.35)) if kind == "scratch" else 0.0,
                labelled=bool(rng.random() >= settings.none_fraction),
            ))
            if hard and rng.random() < HARD.out_of_frame:
                move_out_of_frame(seg.actions[-1], rng)
            t = frame_time + rng.uniform(0.5, 0.62)
        segments.append(seg)
    return segments


def move_out_of_frame(action: Action, rng: np.random.Generator) -> None:
    """Put the contact point just outside one edge of the frame (the stick stays partly visible)."""
    outside = float(rng.uniform(1.03, 1.2))
    edge = int(rng.integers(4))
    if edge == 0:
        action.x = outside
    elif edge == 1:
        action.x = 1 - outside
    elif edge == 2:
        action.y = outside
    else:
        action.y = 1 - outside


def material_sequence(count: int, classes: list[str], rng: np.random.Generator) -> list[str]:
    """``count`` materials from back-to-back shuffles of the classes, so every class appears evenly."""
    out: list[str] = []
    while len(out) < count:
        out.extend(rng.permutation(classes).tolist())
    return out[:count]


def times_text(segments: list[Segment]) -> str:
    """The ``{id}_times.txt`` rows: time material action reaction."""
    rows = []
    for seg in segments:
        for a in seg.actions:
            if a.labelled:
                rows.append(f"{a.time:.6f} {seg.material} {a.kind} {a.reaction}")
            else:
                rows.append(f"{a.time:.6f} None None None")
    return "\n".join(rows) + "\n"


def write_video_files(root: Path, settings: SynthesisParams, number: int, vid: str, materials: list[str]) -> None:
    """Write one video's mp4, wav and times file; seeded by (seed, number) alone."""
    from avgen_datasets.synthesis import HARD, SceneRenderer, render_audio

    rng = np.random.default_rng([settings.seed, number])
    segments = plan_segments(settings, materials, rng)
    wave = render_audio(segments, settings.video_seconds, settings.audio_rate, rng)
    write_wav(root / f"{vid}_denoised.wav", wave, settings.audio_rate)
    renderer = SceneRenderer(segments, settings.size, settings.fps, rng, HARD if settings.difficulty == "hard" else None)
    num_frames = int(round(settings.video_seconds * settings.fps))
    write_video(root / f"{vid}_denoised.mp4", renderer.frames(num_frames), settings.fps)
    write_text(root / f"{vid}_times.txt", times_text(segments))


def write_dataset(
    root: Path,
    settings: SynthesisParams,
    on_video: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Write the whole dataset into ``root`` (videos in parallel threads); returns the manifest."""
    root.mkdir(parents=True, exist_ok=True)
    classes = list(MATERIALS[: settings.classes])
    rng = np.random.default_rng(settings.seed)
    ids = [f"synth{i:04d}" for i in range(settings.videos)]
    num_test = max(1, round(settings.test_fraction * settings.videos))
    test_ids = sorted(rng.choice(ids, size=num_test, replace=False).tolist())
    train_ids = [v for v in ids if v not in test_ids]
    # Materials per split from their own back-to-back shuffles, so the test split covers the classes too.
    sequences = {
        split: iter(material_sequence(len(split_ids) * settings.segments, classes, rng))
        for split, split_ids in (("train", train_ids), ("test", test_ids))
    }
    jobs = [
        (number, vid, [next(sequences["test" if vid in test_ids else "train"]) for _ in range(settings.segments)])
        for number, vid in enumerate(ids)
    ]
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        futures = [pool.submit(write_video_files, root, settings, *job) for job in jobs]
        for done, future in enumerate(as_completed(futures), start=1):
            future.result()
            if on_video is not None:
                on_video(done, settings.videos)
    finally:  # on an error or Ctrl-C the videos not yet started are dropped, not written first
        pool.shutdown(wait=True, cancel_futures=True)
    write_text(root / "train.txt", "\n".join(train_ids) + "\n")
    write_text(root / "test.txt", "\n".join(test_ids) + "\n")
    manifest = {"generator": "synthetic_hits", "version": GENERATOR_VERSION, "settings": settings.manifest_settings()}
    write_json(root / SYNTHETIC_MANIFEST, manifest)
    return manifest


def read_manifest(root: Path) -> dict[str, Any] | None:
    """The generator manifest of a folder, or None when it has none (or it is unreadable)."""
    try:
        return json.loads((root / SYNTHETIC_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def synthesize(root: Path, settings: SynthesisParams, progress: Any = None) -> bool:
    """Make ``root`` hold the dataset for ``settings``; returns False when it already did.

    Writes into a temporary sibling folder and renames it into place, so concurrent runs and
    interrupted or failed runs (a full disk) never leave a half-written dataset. A non-empty folder
    that this generator did not write is never touched; a folder that cannot be written is one line.
    """
    root = Path(root)
    wanted = {"generator": "synthetic_hits", "version": GENERATOR_VERSION, "settings": settings.manifest_settings()}
    if read_manifest(root) == wanted:
        return False
    if root.exists() and not root.is_dir():
        raise AvgenError(f"'{root}' is a file, not a folder; choose a folder for the synthetic dataset")
    if root.exists() and any(root.iterdir()) and read_manifest(root) is None:
        raise AvgenError(f"'{root}' exists and was not written by synthetic_hits; choose an empty folder for root or delete it")
    with staging_folder(root) as staging, named_as(staging, root):
        with _progress(progress, f"synthesizing {settings.videos} videos into {root}", settings.videos) as advance:
            write_dataset(staging, settings, on_video=advance)
        try:
            if root.exists():
                if read_manifest(root) == wanted:  # another process finished first
                    return False
                old = root.with_name(f".{root.name}.old-{os.getpid()}-{time.monotonic_ns()}")
                os.replace(root, old)
                shutil.rmtree(old, ignore_errors=True)
            try:
                os.replace(staging, root)
            except OSError:
                if read_manifest(root) != wanted:
                    raise
        except OSError as exc:
            raise folder_error(root, "the dataset folder", exc, "choose a writable folder for it") from exc
    return True


@contextmanager
def _progress(progress: Any, description: str, total: int) -> Iterator[Callable[[int, int], None]]:
    """A callback (done, total) reporting to a given rich Progress, a callable, or a new rich bar."""
    if progress is not None and hasattr(progress, "add_task"):
        task = progress.add_task(description, total=total)
        yield lambda done, _total: progress.update(task, completed=done)
    elif callable(progress):
        yield lambda done, all_: progress(done, all_, description)
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=False) as bar:
            task = bar.add_task(description, total=total)
            yield lambda done, _total: bar.update(task, completed=done)


class SyntheticHits(GreatestHits):
    """The generated dataset, read through the Greatest Hits loader."""

    def __init__(self, params: SyntheticHitsParams) -> None:
        self.synth_params = params
        super().__init__(GreatestHitsParams(
            root=params.root, clip_seconds=params.clip_seconds, offset=params.offset,
            sample_rate=params.sample_rate, materials=list(MATERIALS[: params.classes]),
            val_fraction=params.val_fraction, seed=params.seed, quiet_per_video=params.quiet_per_video,
        ))

    def settings(self) -> SynthesisParams:
        return SynthesisParams(**self.synth_params.model_dump(include=set(SynthesisParams.model_fields)))

    def prepare(self, progress: Any = None) -> None:
        """Write the dataset when missing or stale, then check it like any Greatest Hits folder."""
        if synthesize(self.root, self.settings(), progress):
            self._splits = None
        super().prepare()


def make_synthetic_hits(params: SyntheticHitsParams, context: BuildContext) -> SyntheticHits:
    return SyntheticHits(params)
