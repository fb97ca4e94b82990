"""Visual encoders: torchvision ResNets and AlexNet fc7, timm models, EfficientNet-Lite0."""

from __future__ import annotations

from avgen import hookimpl
from avgen_vision.catalog import SPECS, make_factory
from avgen_vision.encoder import FrameEncoder, auto_batch_size
from avgen_vision.params import EncoderParams, TimmParams

__all__ = ["EncoderParams", "FrameEncoder", "TimmParams", "auto_batch_size"]


@hookimpl
def register_encoders(register):
    for spec in SPECS:
        register(spec.name, make_factory(spec), params=spec.params, summary=spec.summary, card=spec.card)
