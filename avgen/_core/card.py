"""A component's card: what it is (sample rate, size, weights, licence, paper), apart from how to build it.

Torch-free, so the registry and ``avgen list``/``show`` stay light.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

KINDS: tuple[str, ...] = ("encoder", "representation", "generator", "loss", "dataset", "metric", "detector", "index")


class Card(BaseModel):
    """What a component is (not how to build it): shown by ``avgen show``; unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dim: int | str | None = Field(None, description="feature or representation size (an expression of Params when it depends on them)")
    sample_rate: int | str | None = Field(None, description="Hz of the audio it reads or writes")
    clip_seconds: float | None = Field(None, description="length of one clip")
    classes: int | None = Field(None, description="number of classes")
    fps: float | None = Field(None, description="video frames per second it samples")
    input_size: int | None = Field(None, description="frame size in pixels")
    input: str | None = Field(None, description="what it expects as input, when not obvious")
    mean: list[float] | str | None = Field(None, description="input normalisation mean (RGB), or where it comes from")
    std: list[float] | str | None = Field(None, description="input normalisation std (RGB), or where it comes from")
    weights: str | None = Field(None, description="where pretrained weights come from")
    license: str | None = Field(None, description="licence of the code, weights or data")
    paper: str | None = Field(None, description="the paper it implements")
    url: str | None = Field(None, description="where to get it (data, code)")
    network: str | None = Field(None, description="the network it uses, when another paper's")
    equation: str | None = Field(None, description="what it computes, in the paper's notation")
    definition: str | None = Field(None, description="what it computes, in words")
    library: str | None = Field(None, description="the library it relies on")
    writes: str | None = Field(None, description="files it writes into the run directory")

    def as_dict(self) -> dict[str, Any]:
        """The keys that are set, in declaration order."""
        return self.model_dump(exclude_none=True)
