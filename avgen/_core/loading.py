"""Rebuilding a trained model: from a run directory or an exported folder, its exemplar bank and training split."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch

from avgen._core.errors import AvgenError, shown

if TYPE_CHECKING:
    from avgen._core.splits import SplitData
    from avgen._core.recipe import Recipe
GENERATION_SECTIONS = ("generator", "representation", "eval", "index")  # what `avgen generate --set` may change


def load_trained(run_dir: Path, device: torch.device, overrides: tuple[str, ...] | list[str] = (),
                 ) -> tuple[Any, Any, Any, torch.nn.Module, dict[str, Any]]:
    """(recipe, encoder, representation, generator, meta) rebuilt from a run directory alone.

    ``overrides`` (``key.path=value``, as ``avgen run --set``) change generation settings of the
    run's recipe, e.g. a sampler's steps; a change the trained weights do not fit is an error.
    """
    from avgen._core.checkpoint import load_run_checkpoint
    from avgen._core.components import SavedModel

    run_dir = Path(run_dir)
    ckpt, state, meta = load_run_checkpoint(run_dir)
    environment = run_environment(run_dir)
    if isinstance(environment, dict):  # the precision of the run's features: generate encodes frames the same way
        meta = {**meta, "featurize_precision": environment.get("featurize_precision", "fp32")}
    with install_hinted(environment):
        return build_saved(SavedModel(state, meta), run_dir / "recipe.toml", ckpt, device, overrides)


def run_environment(run_dir: Path) -> Any:
    """The run's environment.json (what it ran with, its components' distributions), or {}."""
    try:
        return json.loads((run_dir / "environment.json").read_text())
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def install_hinted(environment: Any) -> Iterator[None]:
    """An AvgenError naming a component as unknown gets the ``pip install`` the run's record names (``_install_hint``)."""
    try:
        yield
    except AvgenError as exc:  # the recipe's check names an unknown component in its own words
        hint = _install_hint(environment, str(exc))
        if not hint:
            raise
        raise AvgenError(f"{exc}{hint}") from None


def _install_hint(environment: Any, message: str) -> str:
    """'; it came from ... : pip install ...' for the component a run recorded (environment.json) that ``message``
    names as unknown, else '' (also where its plugin is installed but failed to load: the message says why)."""
    from avgen._core.plugins import broken_plugins

    records = environment.get("components") if isinstance(environment, dict) else None
    broken = {name for p in broken_plugins() for name in (p.name, p.distribution)}
    for record in records if isinstance(records, list) else []:
        if (isinstance(record, dict) and f"unknown {record.get('kind')} '{record.get('name')}'" in message
                and record.get("distribution") not in (None, "?")
                and not broken & {record.get("plugin"), record.get("distribution")}):  # installed, but failed to load
            return (f"; the run was trained with it from the plugin '{record.get('plugin')}' of the distribution "
                    f"{record['distribution']} {record.get('version')}: pip install '{record['distribution']}=={record.get('version')}'")
    return ""


def build_saved(saved: Any, recipe_source: Path, weights_source: Path, device: torch.device,
                overrides: tuple[str, ...] | list[str] = (),
                ) -> tuple[Any, Any, Any, torch.nn.Module, dict[str, Any]]:
    """(recipe, encoder, representation, generator, meta) rebuilt from an ``avgen.SavedModel`` (weights and meta),
    with ``overrides`` applied to its recipe's generation settings."""
    import copy

    from avgen._core.build import build_encoder, build_generator, build_representation, check_forward
    from avgen._core.featurize import frames_per_clip
    from avgen._core.tuning import load_tuned_encoder
    from avgen._core.components import GeneratorShape
    from avgen._core.recipe import validate_recipe
    from avgen._core.recipefiles import apply_override
    meta = saved.meta
    if not isinstance(meta.get("recipe"), dict) or not isinstance(meta.get("shape"), dict):
        raise AvgenError(f"{recipe_source}: carries no recipe/shape; it was not written by avgen")
    raw = copy.deepcopy(meta["recipe"])
    recipe = validate_recipe(copy.deepcopy(raw), recipe_source)  # as recorded: its errors are the recipe's
    for item in overrides:
        if item.split("=", 1)[0].strip().split(".", 1)[0] not in GENERATION_SECTIONS:
            raise AvgenError(f"--set {shown(item)}: generate can change only {', '.join(GENERATION_SECTIONS)} settings, "
                             "e.g. --set generator.steps=4")
        apply_override(raw, item)
    if overrides:  # the recorded recipe was valid: what fails now is what --set changed
        recipe = validate_recipe(raw, "--set " + " ".join(shown(item) for item in overrides))
    if recipe.encoder is None or recipe.representation is None or recipe.generator is None:
        raise AvgenError(f"{recipe_source}: the recipe has no encoder, representation or generator")
    encoder = build_encoder(recipe, device)
    load_tuned_encoder(encoder, Path(recipe_source).parent, recipe.encoder.name)
    representation = build_representation(recipe, device)
    shape = GeneratorShape(**meta["shape"])
    model = build_generator(recipe, shape)
    try:
        model.load_state_dict(saved.weights)
    except RuntimeError as exc:
        raise AvgenError(f"{weights_source}: its weights do not fit {recipe.generator.name} ({_first_mismatch(exc)}); "
                         + ("the recipe or the generator's plugin changed since it was trained: "
                            f"avgen run {recipe_source} --fresh retrains it" if recipe_source.name == "recipe.toml" else
                            "the generator's plugin changed since it was exported: install the version its "
                            f"{recipe_source.name} names")) from exc
    model = model.to(device).eval()
    check_forward(recipe, model, shape, frames_per_clip(clip_seconds(recipe, meta), encoder.fps), device)
    return recipe, encoder, representation, model, meta


def _first_mismatch(exc: RuntimeError) -> str:
    """The first detail of torch's load_state_dict error (which weight, which shapes), not its header line."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    detail = next((line for line in lines[1:] if not line.startswith("Error(s) in loading")), lines[0] if lines else "")
    return detail.split(". ", 1)[0].rstrip(".") if detail.startswith(("size mismatch", "Missing", "Unexpected")) else detail


def load_model_folder(path: Path, device: torch.device, overrides: tuple[str, ...] | list[str] = (),
                      ) -> tuple[Any, Any, Any, torch.nn.Module, dict[str, Any], Any]:
    """(recipe, encoder, representation, generator, meta, bank or None) from a model folder a plugin reads
    (the ``open_model`` hook; ``avgen export`` writes such folders)."""
    from avgen._core.plugins import first_answer

    path = Path(path)
    if not path.is_dir():
        raise AvgenError(f"{path}: not a folder; give the folder `avgen export RUN_DIR OUT_DIR` wrote")
    if (path / "checkpoints").is_dir():
        raise AvgenError(f"{path}: this is a run directory; use --run {path}, or export it first")
    saved = first_answer("open_model", path=path)
    if saved is None:
        raise AvgenError(f"{path}: not a model folder that an installed plugin reads "
                         "(`avgen export RUN_DIR OUT_DIR` writes them, with config.json and SHA256SUMS)")
    built = build_saved(saved, path / "config.json", path, device, overrides)
    return (*built, saved.bank)


def saved_model_of_run(run_dir: Path, device: torch.device, exemplars: bool = True, console: Any = None) -> Any:
    """A run's best model as an ``avgen.SavedModel`` (weights, meta, and with ``exemplars`` its training bank)."""
    from avgen._core.checkpoint import load_run_checkpoint
    from avgen._core.components import SavedModel

    run_dir = Path(run_dir)
    ckpt, state, meta = load_run_checkpoint(run_dir)
    bank = None
    with install_hinted(run_environment(run_dir)):  # rebuilt and checked, as generate will: its plugins are here
        recipe, encoder, representation, _, _ = build_saved(SavedModel(state, meta), run_dir / "recipe.toml", ckpt, device)
    if exemplars:  # the encoder and representation of the checkpoint already read (not a second load_trained)
        bank = exemplar_bank(recipe, run_dir, device, encoder, representation, console=console)
    return SavedModel(state, meta, bank)


def library_bank(path: Path, representation: Any, representation_spec: dict[str, Any], seconds: float,
                 console: Any) -> Any:
    """An ``avgen.ExemplarBank`` of the sound folder ``path`` (clips of ``seconds``), indexed by a plugin
    (the ``open_library`` hook)."""
    from avgen._core.plugins import first_answer

    path = Path(path)
    if not path.is_dir():
        raise AvgenError(f"--library {path}: not a folder; give a folder of wav/flac/ogg/mp3 files")
    bank = first_answer("open_library", path=path, representation=representation,
                        representation_spec=representation_spec, clip_seconds=seconds, console=console)
    if bank is None:
        raise AvgenError(f"--library {path}: no installed plugin indexes sound folders (avgen's share plugin does)")
    return bank


def material_class(name: str, meta: dict[str, Any]) -> int:
    """The class index of ``--material NAME`` among the model's classes."""
    names = list(meta.get("class_names") or [])
    if name not in names:
        listed = ", ".join(names) if names else "none"
        raise AvgenError(f"material {shown(name)} is not a class of this model; its classes: {listed}")
    return names.index(name)


def clip_seconds(recipe: Any, meta: dict[str, Any]) -> float:
    """The length of the clips the model was trained on."""
    return float(meta.get("clip_seconds") or recipe.data.params.get("clip_seconds", 0.5))


def exemplar_bank(recipe: "Recipe", run_dir: Path, device: torch.device, encoder: Any, representation: Any,
                  console: Any = None) -> Any:
    """The training split as an ``avgen.ExemplarBank``: time-averaged representations [M, D], waves [M, T]
    and each clip's id and class (from the cache, or the dataset)."""
    from avgen._core.components import ExemplarBank
    from avgen._core.retrieval import time_average

    train, names = _featurized_training_split(recipe, run_dir, device, encoder, representation, console)
    entries = [{"clip": c.id, "class": names[c.label] if c.label >= 0 else None} for c in train.clips]
    return ExemplarBank(time_average(train.rep), train.wave, entries, source=f"training split of {run_dir}")


def training_split(recipe: "Recipe", run_dir: Path, device: torch.device, encoder: Any, representation: Any,
                   console: Any = None) -> "SplitData":
    """The run's training split (from the cache, or the dataset)."""
    return _featurized_training_split(recipe, run_dir, device, encoder, representation, console)[0]


def _featurized_training_split(recipe: "Recipe", run_dir: Path, device: torch.device, encoder: Any,
                               representation: Any, console: Any = None) -> tuple["SplitData", list[str]]:
    """(the run's training split, the dataset's class names), from the cache or the dataset.

    The dataset is read where the run found it (its recorded absolute paths); a missing one is an
    error, never written anew.
    """
    from avgen._core.build import build_dataset
    from avgen._core.cache import FeatureCache
    from avgen._core.console import make_console
    from avgen._core.featurize import Featurizer
    from avgen._core.recipe import path_params
    recipe = recipe.with_absolute_paths()
    for name, path in path_params("dataset", recipe.data).items():
        if not path.exists():
            raise AvgenError(f"--exemplar needs the training clips of {run_dir}: data.{name} '{path}' is missing; "
                             "put the dataset back there, or use --raw")
    featurizer = Featurizer(recipe, build_dataset(recipe), encoder, representation, device,
                            console if console is not None else make_console(stderr=True), FeatureCache(),
                            stage_lines=False)  # the run's featurize lines are not generate's
    train, _ = featurizer.featurize_split("train")
    return train, featurizer.dataset.class_names
