"""`avgen recipes`: the recipes that ship with avgen, each with its one-line description."""

from __future__ import annotations

from avgen._core.cli import cli, console, err_console


@cli.command("recipes")
def recipes_cmd() -> None:
    """List the shipped recipes; run one by name with `avgen run NAME`."""
    from avgen._core.recipefiles import recipe_summary, recipes_folder, shipped_recipes
    shipped = shipped_recipes()
    width = max(map(len, shipped), default=0)
    for name, path in shipped.items():
        console.print(f"{name:<{width}}  {recipe_summary(path)}", markup=False, highlight=False, soft_wrap=True)
    err_console.print(f"{len(shipped)} recipes in {recipes_folder()}; run one with `avgen run NAME`, "
                      "or copy its file to change it", markup=False, highlight=False, soft_wrap=True)
