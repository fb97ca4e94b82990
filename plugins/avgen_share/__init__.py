"""Sharing models and using your own sounds: ``avgen export``, ``avgen generate --model`` and ``--library``.

- ``export`` command (``register_commands``): a run's model as a self-contained folder in the
  Hugging Face model-repository layout, with a model card and the SHA-256 of every file;
- ``open_model``: reads such a folder back, refusing one whose files do not match their SHA-256;
- ``open_library``: a folder of wav/flac/ogg/mp3 files as an exemplar bank, clips cut around
  each file's onsets, indexed once and cached.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from avgen import hookimpl


@hookimpl
def open_model(path: Path) -> Any:
    from avgen_share.folder import is_model_folder, read_model_folder

    return read_model_folder(Path(path)) if is_model_folder(Path(path)) else None


@hookimpl
def open_library(path: Path, representation: Any, representation_spec: dict, clip_seconds: float, console: Any) -> Any:
    from avgen_share.library import index_library

    return index_library(Path(path), representation, representation_spec, clip_seconds, console)


@click.command("export")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--exemplars/--no-exemplars", default=True, show_default=True,
              help="Include the training clips (16-bit) and their keys for `generate --exemplar`; without them "
                   "the model's users give --library.")
def export_cmd(run_dir: Path, out_dir: Path, exemplars: bool) -> None:
    """Export the trained model of RUN_DIR to OUT_DIR (a new or empty folder): config.json, model.safetensors,
    the model card README.md, optional exemplars, SHA256SUMS; `avgen generate VIDEO --model OUT_DIR` needs
    nothing else, and the Hugging Face Hub's client can upload it as a model repository."""
    from avgen import make_console
    from avgen_share.export import export_run

    console = make_console(stderr=True)
    with console.status(f"exporting {run_dir}"):
        sizes = export_run(run_dir, out_dir, exemplars=exemplars, console=console)
    for name, size in sizes.items():
        console.print(f"  {name}  {size / 1e6:.2f} MB", markup=False, highlight=False)
    click.echo(str(out_dir))


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(export_cmd)
