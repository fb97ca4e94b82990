"""`avgen data synth`: write the synthetic Greatest Hits-layout dataset to a folder."""

from __future__ import annotations

import time
from pathlib import Path

import click
from pydantic import ValidationError

from avgen import AvgenError


def count_clips(root: Path, classes: int) -> dict[str, int]:
    """Clips per split of a synthetic folder, as the loader sees them."""
    from avgen_datasets.greatest_hits import GreatestHits, GreatestHitsParams
    from avgen_datasets.materials import MATERIALS

    dataset = GreatestHits(GreatestHitsParams(root=root, materials=list(MATERIALS[:classes])))
    return {split: len(dataset.clips(split)) for split in ("train", "val", "test")}


@click.group("data")
def data_group() -> None:
    """Dataset tools: synthesize the default dataset."""


@data_group.command("synth")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--videos", type=int, default=None, help="number of videos (default 24)")
@click.option("--seed", type=int, default=None, help="generator seed (default 0)")
@click.option("--classes", type=int, default=None, help="number of materials, 1-17 (default 17)")
@click.option("--fps", type=int, default=None, help="frame rate of the videos (default 30)")
@click.option("--size", type=int, default=None, help="video width and height in pixels (default 128)")
@click.option("--difficulty", type=click.Choice(["easy", "hard"]), default=None,
              help="easy: one look per material (default); hard: shared looks, camera, lighting, occlusion")
def synth(out: Path, videos: int | None, seed: int | None, classes: int | None, fps: int | None, size: int | None,
          difficulty: str | None) -> None:
    """Write a synthetic stick-hitting dataset in the Greatest Hits layout to OUT."""
    from avgen_datasets.synthetic_hits import SynthesisParams, synthesize
    from avgen import format_validation_error

    given = {"videos": videos, "seed": seed, "classes": classes, "fps": fps, "size": size, "difficulty": difficulty}
    try:
        settings = SynthesisParams(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        raise AvgenError(f"avgen data synth: {format_validation_error(exc)}") from None
    from avgen import check_writable

    check_writable(out, "the dataset folder", "give a writable folder as OUT")
    began = time.perf_counter()
    wrote = synthesize(out, settings)
    counts = count_clips(out, settings.classes)
    seconds = time.perf_counter() - began
    summary = ", ".join(f"{split} {n}" for split, n in counts.items())
    verb = f"wrote {settings.videos} videos in {seconds:.1f} s" if wrote else "already up to date"
    click.echo(f"{out}: {verb}; clips: {summary}")
