"""Recipes: one flat TOML file per experiment, validated by pydantic and by each component's Params."""

from __future__ import annotations

import copy
import math
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from avgen._core.errors import AvgenError, RecipeError, cut, shown
from avgen._core.plugins import get_component
from avgen._core.registry import format_validation_error

COMPONENT_SECTIONS = {"data": "dataset", "encoder": "encoder", "representation": "representation", "generator": "generator",
                      "detector": "detector", "index": "index"}
LIST_SECTIONS = {"loss": "loss", "metric": "metric"}
MAX_LOSS_WEIGHT = 1e6


PHASE_NAME = r"^[a-z][a-z0-9_]*$"  # a phase a representation declares (checked against it when the run starts)

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunSection(_Strict):
    name: str = Field("run", description="run name; the run directory is <out>/<name>")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed for every random choice (data order, init)")
    out: Path = Field(Path("runs"), description="folder holding run directories")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where models run")
    group: str = Field("", description="set by [[variant]]: the variants of one recipe share <out>/<group>/")

    @field_validator("name", "group")
    @classmethod
    def _safe_name(cls, v: str, info: Any) -> str:
        if info.field_name == "group" and v == "":
            return v
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}", v):
            raise ValueError("must be 1-100 letters, digits, '_', '-' or '.', starting with a letter or digit")
        return v


class TrainParams(_Strict):
    """The [train] section: optimisation settings (paper: Adam, batch 40)."""

    optimizer: Literal["adam", "adamw", "sgd"] = Field("adam", description="optimiser")
    lr: float = Field(1e-3, gt=0, le=10, description="learning rate")
    weight_decay: float = Field(0.0, ge=0, le=10, description="weight decay")
    batch_size: int = Field(40, ge=1, le=1_000_000, description="global batch size (paper: 40)")
    epochs: int = Field(30, ge=0, le=100_000, description="training epochs")
    schedule: Literal["none", "cosine", "step"] = Field("none", description="learning-rate schedule")
    step_size: int = Field(10, ge=1, le=100_000, description="epochs per decay for schedule='step'")
    gamma: float = Field(0.1, gt=0, le=1, description="decay factor for schedule='step'")
    early_stopping: int = Field(0, ge=0, le=100_000, description="stop after this many epochs without val improvement (0: off)")
    select: str = Field("total", min_length=1, description="the validation value the best checkpoint and early "
                        "stopping follow: 'total' (the weighted sum) or one loss's name, e.g. 'class_nll' for a "
                        "generator whose sound is its predicted class's prototype")
    grad_clip: float = Field(0.0, ge=0, le=1e6, description="clip the gradient norm to this value (0: off)")
    amp: bool = Field(False, description="mixed precision (bf16/fp16 autocast) on CUDA")
    decode_phase: str = Field(
        "given", max_length=64, pattern=PHASE_NAME,
        description="phase used to decode s' to a waveform for waveform losses in training (one of the representation's phases)",
    )
    num_workers: int = Field(0, ge=0, le=256, description="DataLoader workers for training batches")
    grad_norms: bool = Field(True, description="log each loss term's gradient norm at the generator's parameters (first batch of each epoch)")
    balance: Literal["off", "grad_share"] = Field(
        "off", description="automatic loss balance: 'grad_share' rescales each term every epoch so its gradient norm "
                           "takes its share of the total (off: the recipe's weights, as in the paper)")
    balance_shares: dict[str, Annotated[float, Field(gt=0, le=1e6)]] = Field(
        default_factory=dict, description="balance = 'grad_share': relative share per loss name (unlisted terms: 1)")


class FeaturizeSection(_Strict):
    """The [featurize] section: how the visual encoder runs."""

    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="'auto': bfloat16 where the device computes it natively (CPU AVX512-BF16/AMX, CUDA) and "
                            "the first batch's features agree with fp32 (cosine >= 0.999), else fp32; 'fp32' or "
                            "'bf16' force one")


class EvalSection(_Strict):
    """The [eval] section: how test sounds are generated for the metrics."""

    phase: str | None = Field(None, max_length=64, pattern=PHASE_NAME,
                              description="phase for the raw sound: one the representation declares (default: its first, other than 'given')")
    top_k: int = Field(10, ge=1, le=10_000, description="training clips retrieved per test clip")
    examples: int = Field(8, ge=0, le=1000, description="test clips shown in the report")
    split: Literal["test", "val"] = Field("test", description="split evaluated")
    library: Path | None = Field(None, description="a folder of your own sounds (as `avgen generate --library`): each "
                                                   "test clip's exemplar sound comes from it instead of the training split; "
                                                   "R@K still retrieves training clips")
    exemplar: Literal["eq8", "predicted_class"] = Field(
        "eq8", description="each test clip's exemplar sound: 'eq8' the training clip nearest to s' (the paper's Eq. 8); "
                           "'predicted_class' the nearest among the training clips of the class head's predicted class "
                           "(a generator without a class head keeps Eq. 8's). R@K is Eq. 8's either way; the class-restricted "
                           "retrieval's is reported apart as R@K_by_class")


class ComponentSpec(_Strict):
    """A resolved component section: its registered name and validated params."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    weight: float = 1.0  # for losses
    version: str = "1"  # the component version the params were resolved at (see ``validate_recipe``)
    given: list[str] = Field(default_factory=list, exclude=True)  # the params the recipe names; the rest are defaults


class Recipe(_Strict):
    """A validated recipe."""

    run: RunSection = RunSection()
    data: ComponentSpec
    encoder: ComponentSpec | None = None
    representation: ComponentSpec | None = None
    generator: ComponentSpec | None = None
    detector: ComponentSpec | None = None  # fitted on the training videos and kept in the run (detector.json)
    index: ComponentSpec | None = None  # the exemplar retrieval's index (None: exact, avgen._core.retrieval.DEFAULT_INDEX)
    loss: list[ComponentSpec] = Field(default_factory=list)
    metric: list[ComponentSpec] = Field(default_factory=list)
    featurize: FeaturizeSection = FeaturizeSection()
    train: TrainParams = TrainParams()
    eval: EvalSection = EvalSection()
    source: Path | None = None

    def to_toml_dict(self) -> dict[str, Any]:
        """The resolved recipe as the TOML structure it came from (defaults filled in)."""
        out: dict[str, Any] = {"run": _plain(self.run.model_dump())}
        for section in COMPONENT_SECTIONS:
            spec = getattr(self, section)
            if spec is not None:
                out[section] = {"name": spec.name, **_version_key(spec), **_plain(spec.params)}
        for section in LIST_SECTIONS:
            items = getattr(self, section)
            if items:
                out[section] = [
                    {"name": s.name, **({"weight": s.weight} if section == "loss" else {}), **_version_key(s),
                     **_plain(s.params)}
                    for s in items
                ]
        out["featurize"] = _plain(self.featurize.model_dump())
        out["train"] = {k: v for k, v in _plain(self.train.model_dump()).items()
                        if not (k == "select" and v == "total")}  # at its default: the ids of earlier runs hold
        out["eval"] = _plain(self.eval.model_dump())
        return out

    def with_absolute_paths(self) -> Recipe:
        """A copy whose relative path params (e.g. data.root) are absolute, against the working directory now."""
        recipe = self.model_copy(deep=True)
        specs = [(kind, getattr(recipe, section)) for section, kind in COMPONENT_SECTIONS.items()]
        specs += [(kind, spec) for section, kind in LIST_SECTIONS.items() for spec in getattr(recipe, section)]
        for kind, spec in specs:
            if spec is not None:
                for name, path in path_params(kind, spec).items():
                    if not path.is_absolute():
                        spec.params[name] = os.path.abspath(path)
        if recipe.eval.library is not None:
            recipe.eval.library = Path(os.path.abspath(recipe.eval.library))
        return recipe


def _version_key(spec: ComponentSpec) -> dict[str, str]:
    """A resolved section's ``version`` entry: none at version 1, so recipes recorded before versions are unchanged."""
    return {} if spec.version == "1" else {"version": spec.version}


def resolved_as_run(recipe: Recipe, run_dir: Path) -> Recipe:
    """``recipe`` with each component section at the version the run in ``run_dir`` recorded (its recipe.toml; a
    section recorded without one is at version 1): a run started before a component changed a default resumes
    with the defaults it started with. The params the recipe names are kept; without a recorded run, ``recipe``."""
    try:
        recorded = tomllib.loads((Path(run_dir) / "recipe.toml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return recipe
    out = recipe.model_copy(deep=True)
    for section, kind in COMPONENT_SECTIONS.items():
        spec = getattr(out, section)
        if spec is not None:
            setattr(out, section, _at_version(kind, spec, recorded.get(section)))
    for section, kind in LIST_SECTIONS.items():
        specs, entries = getattr(out, section), recorded.get(section)
        if isinstance(entries, list) and len(entries) == len(specs):
            setattr(out, section, [_at_version(kind, s, e) for s, e in zip(specs, entries)])
    return out


def _at_version(kind: str, spec: ComponentSpec, recorded: Any) -> ComponentSpec:
    """``spec`` resolved again at the version of ``recorded`` (a recorded section of the same component), if it differs."""
    if not isinstance(recorded, dict) or recorded.get("name") != spec.name:
        return spec
    version = str(recorded.get("version", "1"))
    if version == spec.version:
        return spec
    params = get_component(kind, spec.name).validate({k: spec.params[k] for k in spec.given if k in spec.params}, version)
    return spec.model_copy(update={"params": params.model_dump(mode="json"), "version": version})


def path_params(kind: str, spec: ComponentSpec) -> dict[str, Path]:
    """The params of a component section that its Params types as paths, by name."""
    params = get_component(kind, spec.name).validate(spec.params)
    return {name: value for name in type(params).model_fields if isinstance(value := getattr(params, name), Path)}


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ---------------------------------------------------------------- the recipes that ship with avgen


# ---------------------------------------------------------------- loading and overrides


def validate_recipe(raw: dict[str, Any], source: Path | str = "<recipe>", text: str | None = None,
                    new: bool = False) -> Recipe:
    """Validate a raw recipe mapping; errors name the recipe, the key (with line) and what is allowed.

    A component section may name the component ``version`` its params are resolved at (the params it does not
    give take that version's defaults); a resolved recipe names it where it is not 1. A section that names none
    is at the component's current version in a ``new`` recipe (a recipe file for a run, ``load_recipes``), and
    at version 1 otherwise: a recipe a run or model folder recorded before it named versions.
    """
    source = Path(source)
    raw = copy.deepcopy(raw)
    known = (set(Recipe.model_fields) - {"source"}) | {"variant"}
    for key in raw:
        if key not in known:
            allowed = ", ".join(sorted(known))
            raise RecipeError(f"{_where(source, text, key)}: unknown section [{cut(key)}]; sections are {allowed}")
    if "data" not in raw:
        raise RecipeError(f"{source}: missing section [data] (e.g. [data] name = \"synthetic_hits\")")
    for key, value in _numbers(raw):
        if not math.isfinite(value):
            raise RecipeError(f"{_where(source, text, key)}: {key} = {value}; numbers in a recipe must be finite")
    resolved: dict[str, Any] = {}
    for section, value in raw.items():
        if section in COMPONENT_SECTIONS:
            resolved[section] = _component(COMPONENT_SECTIONS[section], section, value, source, text, new=new)
        elif section in LIST_SECTIONS:
            if isinstance(value, dict):
                value = [value]
            if not isinstance(value, list):
                raise RecipeError(f"{_where(source, text, section)}: [[{section}]] must be a list of tables")
            resolved[section] = [
                _component(LIST_SECTIONS[section], f"{section}.{i}", v, source, text, weighted=section == "loss", new=new)
                for i, v in enumerate(value)
            ]
        else:
            resolved[section] = value
    resolved["source"] = source
    if resolved.get("generator") is not None:
        missing = [f"[{s}]" for s in ("encoder", "representation") if resolved.get(s) is None]
        missing += ["[[loss]]"] if not resolved.get("loss") else []
        if missing:
            raise RecipeError(f"{_where(source, text, 'generator')}: [generator] needs an [encoder], a [representation] "
                              f"and at least one [[loss]]; missing: {', '.join(missing)}")
    try:
        return Recipe.model_validate(resolved)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise RecipeError(f"{_where(source, text, key)}: {format_validation_error(exc)}") from None


def _numbers(node: Any, key: str = "") -> Iterator[tuple[str, float]]:
    """(dotted key, value) of every float in a raw recipe, lists and tables included."""
    if isinstance(node, float):
        yield key, node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _numbers(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _numbers(v, f"{key}.{i}")


def _component(kind: str, section: str, value: Any, source: Path, text: str | None, weighted: bool = False,
               new: bool = False) -> ComponentSpec:
    if not isinstance(value, dict):
        raise RecipeError(f"{_where(source, text, section)}: [{section}] must be a table with a 'name' key")
    values = dict(value)
    name = values.pop("name", None)
    if not isinstance(name, str) or not name:
        raise RecipeError(f"{_where(source, text, section)}: [{section}] needs name = \"<{kind}>\" (see `avgen list {kind}`)")
    weight = 1.0
    if weighted:
        weight = values.pop("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= MAX_LOSS_WEIGHT:
            raise RecipeError(f"{_where(source, text, section + '.weight')}: {section}.weight must be a number from 0 to "
                              f"{MAX_LOSS_WEIGHT:g} (got {weight!r})")
    version = values.pop("version", None)
    if version is not None and (isinstance(version, bool) or not isinstance(version, (int, str))
                                or not re.fullmatch(r"[A-Za-z0-9_.\-]{1,32}", str(version))):
        raise RecipeError(f"{_where(source, text, section + '.version')}: {section}.version names a component version, "
                          f"e.g. version = \"1\" (got {shown(version)})")
    try:
        component = get_component(kind, name)
    except AvgenError as exc:
        raise RecipeError(f"{_where(source, text, section + '.name')}: {exc}") from None
    version = str(version) if version is not None else component.version if new else "1"
    try:
        params = component.validate(values, version)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = f"{section}." + ".".join(str(p) for p in err["loc"])
        allowed = ", ".join(component.params.model_fields)
        raise RecipeError(
            f"{_where(source, text, key)}: {format_validation_error(exc, section)}"
            f" ({kind} '{name}' takes: {allowed or 'no params'})"
        ) from None
    return ComponentSpec(name=name, params=params.model_dump(mode="json"), weight=float(weight), version=version,
                         given=sorted(values))


def _where(source: Path, text: str | None, key: str) -> str:
    """'recipe.toml:12 [generator] hidden' when the key's line can be found."""
    line = _find_line(text, key) if text else None
    return f"{source}:{line}" if line else str(source)


def _find_line(text: str, key: str) -> int | None:
    parts = key.split(".")
    section, leaf = parts[0], parts[-1]
    in_section = False
    fallback = None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        header = re.fullmatch(r"\[\[?\s*([^\]]+?)\s*\]\]?", stripped.split("#")[0].strip())
        if header:
            in_section = header.group(1) == section
            if in_section and len(parts) == 1:
                return number
            continue
        if in_section and re.match(rf"{re.escape(leaf)}\s*=", stripped):
            return number
        if fallback is None and re.match(rf"{re.escape(leaf)}\s*=", stripped):
            fallback = number
    return fallback
