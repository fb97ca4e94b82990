"""Recipe files: the shipped recipes by name, reading a file with its --set overrides and [[variant]]s."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from avgen._core.errors import RecipeError, cut, shown
from avgen._core.recipe import Recipe, RunSection, _where, validate_recipe
from avgen._core.registry import format_validation_error


def recipes_folder() -> Path:
    """The shipped recipes: ``avgen/recipes/`` in an installed wheel (hatch_build.py puts the source tree's
    ``recipes/`` there), else ``recipes/`` beside the ``avgen`` package (a clone or an editable install)."""
    package = Path(__file__).resolve().parents[1]  # avgen/ (this file is avgen/_core/recipefiles.py)
    inside = package / "recipes"
    return inside if inside.is_dir() else package.parent / "recipes"


def shipped_recipes() -> dict[str, Path]:
    """Name (the file's stem) -> path of every shipped recipe, sorted by name."""
    folder = recipes_folder()
    return {p.stem: p for p in sorted(folder.glob("*.toml"))} if folder.is_dir() else {}


def recipe_summary(path: Path) -> str:
    """A recipe's one-line description: its first comment line (every shipped recipe starts with one)."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            return ""
        if text := line.lstrip("#").strip():
            return text
    return ""


def find_recipe(item: str | Path) -> Path:
    """A recipe argument as a path: an existing file or folder, anything that looks like a path (ends in .toml or
    has a folder in it, ``a/b``), or else the name of a shipped recipe (``quickstart`` -> the shipped file)."""
    path = Path(item)
    if path.exists() or path.suffix == ".toml" or len(path.parts) != 1:
        return path
    shipped = shipped_recipes()
    if path.name in shipped:
        return shipped[path.name]
    names = ", ".join(shipped) or "none in this install"
    raise RecipeError(f"{cut(str(item))}: no such recipe file, nor a shipped recipe of that name; shipped recipes: "
                      f"{names} (`avgen recipes` describes them)")


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a TOML recipe, apply ``key.path=value`` overrides, validate every section."""
    recipes = load_recipes(path, overrides)
    if len(recipes) != 1:
        raise RecipeError(f"{path}: has [[variant]] entries; load it with load_recipes")
    return recipes[0]


def load_recipes(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> list[Recipe]:
    """A recipe, or one recipe per ``[[variant]]`` entry (run in ``<out>/<name>/<variant>``).

    A variant names itself and sets sections of the base recipe: a table naming another
    component (or a list such as ``loss``) replaces the section, any other table is merged
    into it, e.g. ``[[variant]] name = "owens"  generator = {name = "owens_lstm"}``.
    An error that only ``overrides`` bring is named as theirs (``--set 'train.epocs=5' on FILE: ...``), not the
    file's.
    """
    try:
        return _load_recipes(path, overrides)
    except RecipeError as exc:
        if not overrides:
            raise
        try:
            _load_recipes(path, ())
        except RecipeError:
            raise exc from None  # the file itself is wrong: its own place in it
        import re

        where = re.match(rf"{re.escape(str(path))}(:\d+)?: ", str(exc))
        reason = str(exc)[where.end():] if where else str(exc)
        raise RecipeError(f"--set {' '.join(shown(item) for item in overrides)} on {path}: {reason}") from None


def _load_recipes(path: str | Path, overrides: list[str] | tuple[str, ...]) -> list[Recipe]:
    raw, path, text = _read(path, overrides)
    variants = raw.pop("variant", None)
    if variants is None:
        return [validate_recipe(raw, path, text, new=True)]
    if isinstance(variants, dict):
        variants = [variants]
    if not isinstance(variants, list) or not variants or not all(isinstance(v, dict) for v in variants):
        raise RecipeError(f"{_where(path, text, 'variant')}: [[variant]] must be a list of tables with a name")
    base_run = raw.get("run", {}) if isinstance(raw.get("run", {}), dict) else {}
    try:
        group = RunSection.model_validate({k: v for k, v in base_run.items() if k == "name"})
    except ValidationError as exc:
        raise RecipeError(f"{_where(path, text, 'run.name')}: {format_validation_error(exc, 'run')}") from None
    recipes, names = [], set()
    for i, variant in enumerate(variants):
        variant = dict(variant)
        name = variant.pop("name", None)
        if not isinstance(name, str) or name in names:
            raise RecipeError(f"{_where(path, text, 'variant')}: variant {i} needs a unique name = \"...\"")
        names.add(name)
        merged = copy.deepcopy(raw)
        for key, value in variant.items():
            base = merged.get(key)
            same_component = isinstance(base, dict) and isinstance(value, dict) and \
                value.get("name", base.get("name")) == base.get("name")
            merged[key] = {**base, **value} if same_component else value
        merged.setdefault("run", {})
        merged["run"] = {**merged["run"], "name": name, "group": group.name}
        recipes.append(validate_recipe(merged, path, text, new=True))
    return recipes


def _read(path: str | Path, overrides: list[str] | tuple[str, ...]) -> tuple[dict[str, Any], Path, str]:
    path = Path(path)
    if path.is_dir():
        raise RecipeError(f"{path}: is a folder; give a recipe .toml file (or use `avgen run {path}/*.toml`)")
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        text = path.read_text(encoding="utf-8")
        raw = tomllib.loads(text)
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: not a UTF-8 text file") from None
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: invalid TOML: {exc}") from None
    for item in overrides:
        apply_override(raw, item, path)
    return raw, path, text


def parse_value(text: str) -> Any:
    """A --set value as TOML (numbers, booleans, lists, quoted strings); otherwise a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(raw: dict[str, Any], item: str, path: Path | str = "--set") -> None:
    """Apply ``a.b.c=value`` to the raw recipe; list sections take an index or a component name."""
    if "=" not in item:
        raise RecipeError(f"--set {shown(item)}: expected KEY=VALUE, e.g. --set train.epochs=5")
    key, value_text = item.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not parts or any(not p for p in parts):
        raise RecipeError(f"--set {shown(item)}: bad key {shown(key)}, e.g. --set generator.hidden=256")
    value = parse_value(value_text.strip())
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = _list_item(node, part, ".".join(parts[: i + 1]), item)
            continue
        if part not in node:
            node[part] = {}
        node = node[part]
        if not isinstance(node, (dict, list)):
            raise RecipeError(f"--set {shown(item)}: {'.'.join(parts[: i + 1])} is a value, not a section")
    last = parts[-1]
    if isinstance(node, list):
        raise RecipeError(f"--set {shown(item)}: name a key inside {key.rsplit('.', 1)[0]}.{last}")
    node[last] = value


def _list_item(items: list[Any], part: str, where: str, item: str) -> Any:
    if part.isdigit() and int(part) < len(items):
        return items[int(part)]
    matches = [x for x in items if isinstance(x, dict) and x.get("name") == part]
    if len(matches) == 1:
        return matches[0]
    names = [str(x.get("name")) for x in items if isinstance(x, dict)]
    raise RecipeError(f"--set {shown(item)}: no entry {shown(part)} in {where.rsplit('.', 1)[0]}; entries: {', '.join(names) or 'none'}")
