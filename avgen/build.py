"""Components built from a recipe: the one place that turns a recipe's sections into objects."""

from __future__ import annotations

from typing import Any

import torch

from avgen.errors import AvgenError
from avgen.components import BuildContext, GeneratorShape
from avgen.recipe import Recipe
from avgen.plugins import get_component


def build_dataset(recipe: Recipe) -> Any:
    spec = recipe.data
    return get_component("dataset", spec.name).build(spec.params)


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
