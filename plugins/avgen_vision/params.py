"""Recipe parameters of the visual encoders."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# Owens et al. 2016 run the CNN on every frame of the Greatest Hits videos (29.97 Hz) and
# replicate each feature to the faster sound-feature rate; POCAN (section 3.4) does the same.
DEFAULT_FPS = 30.0


class EncoderParams(BaseModel):
    """Params shared by every visual encoder."""

    model_config = ConfigDict(extra="forbid")

    weights: str = Field(
        "imagenet",
        description=(
            "'imagenet' (the torchvision/timm cache, else their own download; efficientnet_lite0: "
            "the installed package), a path to a .pth/.pt/.safetensors state dict, or 'none' "
            "(random init, for tests only)"
        ),
    )
    fps: float = Field(DEFAULT_FPS, gt=0, le=240, description="frames per second sampled from the video (Owens et al.: every frame, 30)")
    input_size: int = Field(224, ge=32, le=1024, description="frames are resized to input_size x input_size pixels")
    batch_size: int = Field(0, ge=0, le=4096, description="frames per forward pass; 0 picks one from the free memory (on CPU, at most the backbone's cache-friendly size: 4 for EfficientNet-Lite0, 8 for ResNets, 64 for AlexNet)")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="'bf16' runs the CNN under bfloat16 autocast (faster on CPUs with AMX/AVX512-BF16 and on GPUs)"
    )


class TimmParams(EncoderParams):
    """Params of the generic timm encoder: the shared ones plus the timm model name."""

    model: str = Field("resnet50", description="any name from timm.list_models(), e.g. 'convnext_tiny'")
