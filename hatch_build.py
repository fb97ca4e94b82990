"""Build hook (pyproject.toml, [tool.hatch.build.targets.wheel.hooks.custom]): the wheel ships recipes/ as
avgen/recipes/, where avgen._core.recipefiles.recipes_folder finds them. An editable install gets no copy: it reads the
source tree's recipes/ beside the avgen package, so a recipe edited there is the one that runs."""

from __future__ import annotations

from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class ShippedRecipes(BuildHookInterface):
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if version == "standard":
            build_data["force_include"]["recipes"] = "avgen/recipes"
