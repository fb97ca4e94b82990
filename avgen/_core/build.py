"""Components built from a recipe: the one place that turns a recipe's sections into objects."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch

from avgen._core.errors import AvgenError
from avgen._core.components import BuildContext, GeneratorShape
from avgen._core.recipe import Recipe
from avgen._core.plugins import get_component
from avgen._core.registry import Component

BATCH = 2  # clips in the batch of the rehearsal (``rehearse``)
BANK_ROWS = 64  # rows of the random bank the rehearsal indexes (enough for an approximate index to train on)


def build_dataset(recipe: Recipe) -> Any:
    spec = recipe.data
    return get_component("dataset", spec.name).build(spec.params)


def check_dataset(name: str, dataset: Any, splits: tuple[str, ...] = ("train", "val", "test")) -> dict[str, int]:
    """Clips per split of a prepared dataset, its contract checked before any clip is featurized (one AvgenError
    naming the plugin and the dataset): ``clips(split)`` gives a list for every split (empty where it has none),
    each clip's label is its class's index (an int in [0, classes), or -1 for none), and the first training
    clip's ``load_audio`` gives a float tensor [T] (a clip it cannot read is featurize's to report or skip)."""
    try:
        who = _who(get_component("dataset", name))
    except AvgenError:  # a dataset object not registered under that name (a test's)
        who = f"dataset '{name}'"
    classes = len(dataset.class_names)
    counts, first = {}, None
    for split in splits:
        try:
            clips = dataset.clips(split)
        except AvgenError:
            raise
        except Exception as exc:
            raise AvgenError(f"{who} failed on clips({split!r}) (a dataset gives every split, an empty list where it has "
                             f"none) before the run: " + " ".join(f"{type(exc).__name__}: {exc}".split())) from exc
        if not isinstance(clips, (list, tuple)):
            raise AvgenError(f"{who}: clips({split!r}) gave {type(clips).__name__}; expected a list of Clip")
        bad = next((c for c in clips if type(getattr(c, "label", None)) is not int or not -1 <= c.label < classes), None)
        if bad is not None:
            raise AvgenError(f"{who}: clip {getattr(bad, 'id', bad)!r} of the {split} split has label "
                             f"{getattr(bad, 'label', None)!r}; a label is its class's index in class_names, an int in "
                             f"[0, {classes}) ({classes} classes), or -1 for none")
        counts[split] = len(clips)
        first = clips[0] if split == splits[0] and clips else first
    try:
        wave = dataset.load_audio(first) if first is not None else None
    except Exception:  # noqa: BLE001 - an unreadable clip: featurize skips it, or stops under --strict
        return counts
    if wave is not None and not (isinstance(wave, torch.Tensor) and wave.is_floating_point() and wave.dim() == 1):
        raise AvgenError(f"{who}: load_audio({first.id!r}) gave {_shape(wave)}; expected a float tensor "
                         "[T], mono at the dataset's sample_rate (avgen.read_audio returns (wave, rate): take [0])")
    return counts


def build_representation(recipe: Recipe, device: torch.device) -> Any:
    """The recipe's representation on ``device``, or None without one."""
    spec = recipe.representation
    if spec is None:
        return None
    return get_component("representation", spec.name).build(spec.params, BuildContext(device=device)).to(device)


def build_encoder(recipe: Recipe, device: torch.device) -> Any:
    """The recipe's encoder on ``device``, or None without one."""
    spec = recipe.encoder
    if spec is None:
        return None
    return get_component("encoder", spec.name).build(spec.params, BuildContext(device=device))


def generator_shape(features: torch.Tensor, rep: torch.Tensor, class_names: list[str]) -> GeneratorShape:
    """The generator's sizes, read from the training split's features [M, N, dim] and reps [M, D, F].

    A recipe with a [generator] has an [encoder] and a [representation] (checked once, in recipe.py).
    """
    return GeneratorShape(
        feature_dim=int(features.shape[-1]), rep_dim=int(rep.shape[1]), steps=int(rep.shape[2]),
        num_classes=len(class_names),
    )


def build_loss(spec: Any, representation: Any, device: torch.device) -> Any:
    """One [[loss]] entry; losses that decode s' get the run's representation."""
    return get_component("loss", spec.name).build(spec.params, BuildContext(device=device, representation=representation))


def raw_phase(recipe: Recipe, representation: Any) -> str:
    """The phase the raw sound is decoded with: eval.phase, else the representation's first other than 'given'.

    It must be one the representation declares, and not 'given' (generated sound has no reference).
    """
    choices = [p for p in representation.phases if p != "given"]
    phase = recipe.eval.phase if recipe.eval.phase is not None else (choices[0] if choices else "given")
    if phase not in choices:
        name = recipe.representation.name if recipe.representation else "?"
        raise AvgenError(f"{recipe.source}: eval.phase = {phase!r}: representation '{name}' decodes with "
                         f"{', '.join(choices) or 'no phase but the reference'}")
    return phase


def build_generator(recipe: Recipe, shape: GeneratorShape, seed: int | None = None) -> torch.nn.Module:
    """The recipe's generator for ``shape``; with ``seed`` its initial weights depend on the seed only."""
    spec = recipe.generator
    if seed is not None:
        torch.manual_seed(seed)
    return get_component("generator", spec.name).build(spec.params, BuildContext(shape=shape))


def rehearse(recipe: Recipe, dataset: Any, representation: Any, encoder_of: Callable[[], tuple[Any, tuple[int, int]]],
             device: torch.device) -> None:
    """Preflight, before any data is read: the losses' and metrics' ``needs`` matched against the generator's
    ``provides``; the recipe's index built on a random bank and searched once (``rehearse_index``); then one training
    step on 2 random clips of the run's sizes (``encoder_of()``: the encoder, and the samples and frames per clip):
    the generator's prepare, training_outputs, the losses, backward, forward in eval mode. A mistake is one
    AvgenError naming the plugin and the component (for a shape, the expected one too).
    The global random state is kept; what plugin code prints or warns of the random batch is not shown."""
    if representation is not None:
        raw_phase(recipe, representation)
    metrics = [(get_component("metric", spec.name), spec.params) for spec in recipe.metric]
    if recipe.generator is None:
        for component, params in metrics:
            _paired(recipe, component, component.build(params).needs, None, frozenset())
        return
    from avgen._core.train import WeightedLoss, check_objective
    with _quiet(device):
        rehearse_index(recipe, int(representation.dim))
    try:
        encoder, (samples, frames) = encoder_of()
    except AvgenError:  # e.g. weights not downloaded: featurize says so, after prepare has said what data is missing
        return
    gen, rep_c = get_component("generator", recipe.generator.name), get_component("representation", recipe.representation.name)
    losses = [(get_component("loss", spec.name), WeightedLoss(spec.name, spec.weight, build_loss(spec, representation, device)))
              for spec in recipe.loss]
    _, needs_wave = check_objective([loss for _, loss in losses], recipe.train, representation)
    with _quiet(device):  # e.g. can_lstm's base samples of classes the random batch lacks
        wave = 0.1 * torch.randn(BATCH, samples)
        with _blame(rep_c), torch.no_grad():
            rep = representation.encode(wave.to(device)).float().cpu()
        classes = len(dataset.class_names) or 1  # a dataset may know its classes only once prepared
        shape = GeneratorShape(encoder.dim, rep.shape[1], rep.shape[2], classes)
        train = {"features": torch.randn(BATCH, frames, encoder.dim), "rep": rep, "wave": wave,
                 "label": torch.arange(BATCH) % classes}  # prepare gets CPU tensors, as in fit; a step the device's
        batch = {key: value.to(device) for key, value in train.items()}
        with _blame(gen):
            model = build_generator(recipe, shape).to(device)
        needed = set().union(*(_paired(recipe, component, loss.fn.needs | ({"rep"} if loss.fn.needs_wave else set()),
                                       gen, model.provides) for component, loss in losses))
        for component, params in metrics:
            _paired(recipe, component, component.build(params).needs, gen, model.provides)
        with _blame(gen):
            model.prepare(train)
            outputs = _outputs(gen, model.train().training_outputs(batch), needed, shape, "training_outputs")
        if needs_wave:
            with _blame(rep_c):
                outputs["wave"] = representation.decode(outputs["rep"].float(), phase=recipe.train.decode_phase,
                                                        reference=batch["wave"], length=samples)
        total = sum(loss.weight * _scalar(component, loss.fn, outputs, batch) for component, loss in losses)
        if not total.requires_grad:
            raise AvgenError(f"{recipe.source}: no gradient reaches the weights of generator '{gen.name}' (plugin "
                             f"'{gen.plugin}') from the losses {', '.join(loss.name for _, loss in losses)}")
        with _blame(gen):
            total.backward()
        _eval_forward(gen, model, batch["features"], shape)


def check_forward(recipe: Recipe, model: torch.nn.Module, shape: GeneratorShape, frames: int,
                  device: torch.device) -> None:
    """A loaded generator's forward on ``BATCH`` random clips of ``frames`` frames, checked as in the rehearsal
    (rep [B, D, F], class probabilities [B, C]): a model whose plugin changed its outputs since it was trained is
    one line naming the plugin and the expected shape, not an error deep in decoding. The random state is kept."""
    features = torch.randn(BATCH, frames, shape.feature_dim, generator=torch.Generator().manual_seed(0))
    with _quiet(device):
        _eval_forward(get_component("generator", recipe.generator.name), model, features.to(device), shape,
                      f"{BATCH} random clips after loading")


def _eval_forward(gen: Component, model: torch.nn.Module, features: torch.Tensor, shape: GeneratorShape,
                  data: str = f"a batch of {BATCH} random clips") -> None:
    """``model`` in eval mode on ``features``: its outputs and class probabilities checked."""
    with _blame(gen, data), torch.no_grad():
        probs = model.class_probabilities(_outputs(gen, model.eval()(features), {"rep"}, shape, "forward"))
    if probs is not None and _shape(probs) != f"[{BATCH}, {shape.num_classes}]":
        raise AvgenError(f"{_who(gen)}: class_probabilities gave {_shape(probs)}; expected [B, C] = "
                         f"[{BATCH}, {shape.num_classes}]")


def rehearse_index(recipe: Recipe, dim: int) -> None:
    """The recipe's index (its ``[index]``; without one ``exact``) built on ``BANK_ROWS`` random rows [M, dim] and
    searched once, as the generate stage searches the training clips, for ``BATCH`` queries: the last and the first
    bank row (so that indices off by one leave the range). Its answer is checked
    (``avgen._core.retrieval.checked_search``: two tensors, float scores and integer indices [N, k'], k' <= k, in
    [-1, M)); a mistake is one AvgenError naming the plugin and the index."""
    from avgen._core.retrieval import build_index, checked_search, index_component

    component = index_component(recipe.index)
    bank = torch.randn(BANK_ROWS, dim)
    queries = bank[[BANK_ROWS - 1, 0][:BATCH]].clone()
    k = min(recipe.eval.top_k, BANK_ROWS)
    with _blame(component, f"a bank of {BANK_ROWS} random rows"):
        result = build_index(recipe.index, bank).search(queries, k)
    checked_search(result, BATCH, k, _who(component), rows=BANK_ROWS)


@contextlib.contextmanager
def _quiet(device: torch.device) -> Iterator[None]:
    """Plugin code on random data: seeded, the global random state kept, its prints and warnings not shown."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        yield


def _paired(recipe: Recipe, component: Component, needs: frozenset[str], gen: Component | None,
            provides: frozenset[str]) -> set[str]:
    """``needs``, when the generator provides them; else one AvgenError naming both components."""
    if lacking := sorted(set(needs) - set(provides)):
        given = f"generator '{gen.name}' (plugin '{gen.plugin}') provides {', '.join(sorted(provides))}" if gen \
            else "the recipe has no [generator]"
        raise AvgenError(f"{_line_naming(recipe, component.name)}: {component.kind} '{component.name}' (plugin '{component.plugin}') needs "
                         f"{', '.join(lacking)} from the generator, but {given}; pair them differently or drop one")
    return set(needs)


def _line_naming(recipe: Recipe, name: str) -> str:
    """'recipe.toml:23', the first line of the recipe file that names ``name`` (quoted), else the recipe's source."""
    try:
        lines = Path(str(recipe.source)).read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError):
        return str(recipe.source)
    found = next((n for n, line in enumerate(lines, start=1) if f'"{name}"' in line.split("#")[0]), None)
    return f"{recipe.source}:{found}" if found else str(recipe.source)


def _outputs(gen: Component, outputs: Any, needed: set[str], shape: GeneratorShape, call: str) -> dict[str, Any]:
    """A generator's outputs of the rehearsal batch, checked: a mapping with the keys ``needed``, rep [B, D, F]."""
    if not isinstance(outputs, Mapping):
        raise AvgenError(f"{_who(gen)}: {call} returned {type(outputs).__name__}; expected a dict of tensors")
    if lacking := sorted(needed - set(outputs)):
        raise AvgenError(f"{_who(gen)}: {call} gave {', '.join(sorted(outputs)) or 'no outputs'}, without "
                         f"{', '.join(lacking)}, which it declares (provides) and the run needs")
    if "rep" in outputs and _shape(outputs["rep"]) != (expected := f"[{BATCH}, {shape.rep_dim}, {shape.steps}]"):
        raise AvgenError(f"{_who(gen)}: {call} gave rep {_shape(outputs['rep'])} for a batch of {BATCH}; expected "
                         f"[B, D, F] = {expected}")
    return dict(outputs)


def _scalar(component: Component, fn: Any, outputs: dict[str, Any], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """A loss's value of the rehearsal batch, checked: one element."""
    with _blame(component):
        value = fn(outputs, batch)
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise AvgenError(f"{_who(component)}: gave {_shape(value)} for a batch of {BATCH}; expected a scalar tensor "
                         "(the mean over the batch)")
    return value.float().reshape(())


def _shape(value: Any) -> str:
    return str(list(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def _who(component: Component) -> str:
    return f"plugin '{component.plugin}': {component.kind} '{component.name}'"


@contextlib.contextmanager
def _blame(component: Component, data: str = f"a batch of {BATCH} random clips") -> Iterator[None]:
    """Plugin code in the rehearsal: an exception other than an AvgenError becomes one naming the plugin and component."""
    try:
        yield
    except AvgenError:
        raise
    except Exception as exc:
        hint = ""
        if isinstance(exc, KeyError) and component.kind in ("loss", "metric") and exc.args and \
                exc.args[0] not in ("features", "wave", "label"):  # not a batch key: an output it did not declare
            hint = (f" (declare the generator outputs it reads, e.g. needs = frozenset({{{exc.args[0]!r}}}), and "
                    "avgen pairs it only with generators that provide them)")
        raise AvgenError(f"{_who(component)} failed on {data} before the run: "
                         + " ".join(f"{type(exc).__name__}: {exc}".split()) + hint) from exc
