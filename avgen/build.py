"""Components built from a recipe: the one place that turns a recipe's sections into objects."""

from __future__ import annotations

from typing import Any

import torch

from avgen.errors import AvgenError
from avgen.protocols import GeneratorShape
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
    rep = get_component("representation", spec.name).build(spec.params)
    return rep.to(device) if hasattr(rep, "to") else rep


def build_encoder(recipe: Recipe, device: torch.device) -> Any:
    """The recipe's encoder on ``device``, or None without one."""
    spec = recipe.encoder
    if spec is None:
        return None
    return get_component("encoder", spec.name).build(spec.params, device=device)


def generator_shape(recipe: Recipe, features: torch.Tensor | None, rep: torch.Tensor | None,
                    class_names: list[str]) -> GeneratorShape:
    """The generator's sizes, read from the training split's features [M, N, dim] and reps [M, D, F]."""
    if features is None or rep is None:
        raise AvgenError(f"{recipe.source}: [generator] needs an [encoder] and a [representation]")
    return GeneratorShape(
        feature_dim=int(features.shape[-1]), rep_dim=int(rep.shape[1]), steps=int(rep.shape[2]),
        num_classes=len(class_names),
    )


def build_generator(recipe: Recipe, shape: GeneratorShape, seed: int | None = None) -> torch.nn.Module:
    """The recipe's generator for ``shape``; with ``seed`` its initial weights depend on the seed only."""
    spec = recipe.generator
    if seed is not None:
        torch.manual_seed(seed)
    return get_component("generator", spec.name).build(spec.params, shape=shape)
