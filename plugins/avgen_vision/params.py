"""Recipe parameters of the visual encoders."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer

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
    tune: Literal["none", "last_stage"] = Field(
        "none", description="'last_stage': fine-tune the network's last stage on the run's training classes before "
                            "featurizing (efficientnet_lite0; kept in the run as encoder.safetensors); 'none': frozen"
    )
    tune_epochs: int = Field(30, ge=1, le=1000, description="tune: epochs (the one with the best validation accuracy is kept)")
    tune_lr: float = Field(1e-4, gt=0, le=1, description="tune: Adam learning rate of the last stage (the head's: 1e-3)")
    tune_max_clips: int = Field(8192, ge=1, le=1_000_000, description="tune: at most this many training clips, evenly spaced "
                                                                      "(their activations are held in memory)")

    @model_serializer(mode="wrap")
    def _frozen_without_tuning_keys(self, handler: Any) -> Any:
        """A frozen encoder's params leave the tuning keys out, so the recipes, run ids and feature-cache keys of
        frozen encoders stay what they were before tuning existed (earlier runs resume, cached features serve)."""
        data = handler(self)
        if isinstance(data, dict) and self.tune == "none":
            for key in TUNING_KEYS:
                data.pop(key, None)
        return data


TUNING_KEYS = ("tune", "tune_epochs", "tune_lr", "tune_max_clips")


class TimmParams(EncoderParams):
    """Params of the generic timm encoder: the shared ones plus the timm model name."""

    model: str = Field("resnet50", description="any name from timm.list_models(), e.g. 'convnext_tiny'")
