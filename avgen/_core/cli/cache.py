"""`avgen cache info` and `avgen cache clear`: the content-addressed feature cache."""

from __future__ import annotations

import json
import sys

import click

from avgen._core.cli import cli, console


@cli.group("cache")
def cache_group() -> None:
    """Inspect or clear the feature cache ($AVGEN_CACHE, default $AVGEN_HOME/cache)."""


@cache_group.command("info")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def cache_info(as_json: bool) -> None:
    """Where the cache is, how many entries and how many bytes."""
    from avgen._core.cache import FeatureCache

    info = FeatureCache().info()
    if as_json:
        click.echo(json.dumps(info))
    else:
        console.print(f"cache {info['root']}: {info['entries']} entries, {info['bytes'] / 1e6:.1f} MB")


@cache_group.command("clear")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def cache_clear(yes: bool) -> None:
    """Delete every cache entry."""
    from avgen._core.cache import FeatureCache

    cache = FeatureCache()
    if not yes and sys.stdin.isatty():
        click.confirm(f"delete every entry under {cache.root}?", abort=True)
    console.print(f"removed {cache.clear()} entries from {cache.root}")


