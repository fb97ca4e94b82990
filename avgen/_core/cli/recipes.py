"""`avgen recipes`: the recipes that ship with avgen, each with its one-line description, or one recipe's text."""

from __future__ import annotations

import click

from avgen._core.cli import cli, console, err_console
from avgen._core.errors import AvgenError, cut


@cli.command("recipes")
@click.argument("name", required=False)
def recipes_cmd(name: str | None) -> None:
    """List the shipped recipes; run one by name with `avgen run NAME`. With NAME, print that recipe's file
    (`avgen recipes quickstart > mine.toml` copies it to change it)."""
    from avgen._core.recipefiles import recipe_summary, recipes_folder, shipped_recipes
    shipped = shipped_recipes()
    if name is not None:
        if name not in shipped:
            raise AvgenError(f"{cut(name)}: no shipped recipe of that name; shipped recipes: "
                             f"{', '.join(shipped) or 'none in this install'}")
        click.echo(shipped[name].read_text(encoding="utf-8"), nl=False)
        return
    width = max(map(len, shipped), default=0)
    for item, path in shipped.items():
        console.print(f"{item:<{width}}  {recipe_summary(path)}", markup=False, highlight=False, soft_wrap=True)
    err_console.print(f"{len(shipped)} recipes in {recipes_folder()}; run one with `avgen run NAME`, "
                      "print one with `avgen recipes NAME` to copy and change it", markup=False, highlight=False,
                      soft_wrap=True)
