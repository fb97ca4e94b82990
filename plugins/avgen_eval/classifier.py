"""The paper's sound classifier: 5 layers of 1-D convolution + ReLU on raw waveforms.

Trained once per dataset on the real training clips (cached by dataset hash), then used
to classify real test audio (the ceiling) and each model's generated sound (Table 3).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from torch import nn

from avgen import (MEDIA_VERSION, AvgenError, BuildContext, EvalContext, Metric, atomic_path, cache_dir, cache_key,
                   make_once, write_json)


log = logging.getLogger("avgen.eval.classifier")

VERSION = "1"


class ClassifierParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channels: list[int] = Field(default=[16, 32, 64, 128, 256], description="output channels of the 5 conv layers")
    kernels: list[int] = Field(default=[64, 32, 16, 8, 4], description="kernel sizes of the 5 conv layers (samples)")
    strides: list[int] = Field(default=[8, 4, 4, 2, 2], description="strides of the 5 conv layers")
    epochs: int = Field(default=30, ge=1, le=100000, description="training epochs over the real training clips")
    batch_size: int = Field(default=64, ge=1, le=100000, description="training batch size")
    lr: float = Field(default=1e-3, gt=0, le=10.0, description="Adam learning rate")
    seed: int = Field(default=0, ge=0, lt=2**32, description="seed of initialization and shuffling (the classifier is deterministic)")
    cache: bool = Field(default=True, description="reuse a trained classifier for the same dataset hash and params")


class WaveClassifier(nn.Module):
    """Conv1d -> BatchNorm -> ReLU, five times; average + max pooling over time; linear."""

    def __init__(self, num_classes: int, channels: list[int], kernels: list[int], strides: list[int]) -> None:
        super().__init__()
        if not (len(channels) == len(kernels) == len(strides)):
            raise AvgenError("sound_classifier: channels, kernels and strides must have the same length")
        layers: list[nn.Module] = []
        in_ch = 1
        for out_ch, k, s in zip(channels, kernels, strides):
            layers += [nn.Conv1d(in_ch, out_ch, k, stride=s, padding=k // 2), nn.BatchNorm1d(out_ch), nn.ReLU()]
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(2 * in_ch, num_classes)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """float [B, T] -> logits [B, C]; each clip is scaled to unit RMS first (level-invariant)."""
        wave = wave / wave.pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(1e-5)
        h = self.features(wave.unsqueeze(1))
        return self.head(torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1))


def train_classifier(
    waves: torch.Tensor, labels: torch.Tensor, num_classes: int, params: ClassifierParams, device: torch.device
) -> WaveClassifier:
    """Fit a WaveClassifier on labelled waveforms with Adam and a fixed seed."""
    keep = labels >= 0
    waves, labels = waves[keep].float(), labels[keep].long()
    if len(labels) == 0:
        raise AvgenError("sound_classifier: the training split has no labelled clips to train on")
    gen = torch.Generator().manual_seed(params.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(params.seed)
        model = WaveClassifier(num_classes, params.channels, params.kernels, params.strides).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=params.lr)
    model.train()
    for epoch in range(params.epochs):
        order = torch.randperm(len(labels), generator=gen)
        total = 0.0
        for i in range(0, len(order), params.batch_size):
            idx = order[i : i + params.batch_size]
            if len(idx) < 2:  # batch norm needs two samples
                continue
            loss = nn.functional.cross_entropy(model(waves[idx].to(device)), labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        log.debug("sound_classifier epoch %d loss %.4f", epoch + 1, total / len(labels))
    return model.eval()


@torch.no_grad()
def predict(model: WaveClassifier, waves: torch.Tensor, device: torch.device, batch: int = 256) -> torch.Tensor:
    """Predicted class indices, long [N]."""
    model.eval()
    out = [model(waves[i : i + batch].float().to(device)).argmax(dim=1).cpu() for i in range(0, len(waves), batch)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def confusion_matrix(true: torch.Tensor, pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts long [C, C]: row = true class, column = predicted class (unlabelled clips dropped)."""
    keep = true >= 0
    flat = true[keep].long() * num_classes + pred[keep].long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def load_or_train(
    ctx: EvalContext, params: ClassifierParams, num_samples: int
) -> WaveClassifier:
    """The cached classifier for this dataset and params, trained now if absent."""
    num_classes = len(ctx.class_names)
    dataset_hash = ctx.extra.get("dataset_hash") if ctx.extra else None
    settings = params.model_dump(exclude={"cache"})
    key = cache_key("sound_classifier", VERSION, dataset_hash, settings, ctx.sample_rate, num_samples, num_classes,
                    MEDIA_VERSION)
    path = cache_dir() / "classifier" / f"{key}.safetensors"
    use_cache = params.cache and dataset_hash is not None
    if not use_cache:
        log.info("sound_classifier: %s; training without caching", "cache disabled" if not params.cache else "no dataset hash")
        return _train(ctx, params, num_classes)
    made: list[WaveClassifier] = []

    def make(tmp: Path) -> None:  # one process trains it; others evaluating the same data at once wait and read it
        made.append(_train(ctx, params, num_classes))
        _save(made[0], tmp, settings, ctx.class_names)

    make_once(path, make)
    if made:
        return made[0]
    try:
        model = WaveClassifier(num_classes, params.channels, params.kernels, params.strides)
        model.load_state_dict(load_file(str(path)))
        return model.to(ctx.device).eval()
    except Exception as exc:  # a corrupt or stale entry: retrain  # noqa: BLE001
        log.warning("sound_classifier: cached weights %s unreadable (%s); retraining", path, exc)
    model = _train(ctx, params, num_classes)
    with atomic_path(path) as tmp:
        _save(model, tmp, settings, ctx.class_names)
    return model


def _train(ctx: EvalContext, params: ClassifierParams, num_classes: int) -> WaveClassifier:
    train_waves = _train_waves(ctx.train_waves)
    if ctx.train_labels is None or train_waves is None:
        raise AvgenError("sound_classifier: the run has no training split to train the classifier on; add one or remove this metric")
    started = time.perf_counter()
    model = train_classifier(train_waves, ctx.train_labels, num_classes, params, ctx.device)
    log.info("sound_classifier: trained on %d clips in %.1f s", len(train_waves), time.perf_counter() - started)
    return model


def _save(model: WaveClassifier, file: Path, settings: dict[str, Any], class_names: list[str]) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(file), metadata={"settings": json.dumps(settings), "class_names": json.dumps(class_names)})


def _train_waves(source: Any) -> torch.Tensor | None:
    if source is None:
        return None
    waves = source() if callable(source) else source
    return torch.as_tensor(waves)


class SoundClassifier(Metric):
    """The sound_classifier metric: accuracy on real test audio and on each generated kind."""

    def __init__(self, params: ClassifierParams) -> None:
        self.params = params

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        labelled = ctx.test_labels >= 0
        if not bool(labelled.any()):
            log.info("sound_classifier: no labelled test clips; skipped")
            return {}
        model = load_or_train(ctx, self.params, ctx.real_waves.shape[-1])
        num_classes = len(ctx.class_names)
        sets: dict[str, torch.Tensor] = {"real": ctx.real_waves, **ctx.generated}
        metrics: dict[str, float] = {}
        per_class: dict[str, dict[str, float | None]] = {}
        confusions: dict[str, list[list[int]]] = {}
        for kind, waves in sets.items():
            pred = predict(model, waves, ctx.device)
            cm = confusion_matrix(ctx.test_labels, pred, num_classes)
            metrics[f"acc_{kind}"] = round(float(cm.diag().sum()) / max(1, int(cm.sum())), 6)
            rows = cm.sum(dim=1)
            per_class[kind] = {
                name: (round(float(cm[j, j]) / int(rows[j]), 6) if rows[j] > 0 else None)
                for j, name in enumerate(ctx.class_names)
            }
            confusions[kind] = cm.tolist()
            from avgen_eval.figures import save_confusion_matrix  # matplotlib: only when drawing

            save_confusion_matrix(
                ctx.run_dir / "figures" / f"confusion_{kind}.png", cm, ctx.class_names,
                title=f"sound classifier on {kind} sound (accuracy {metrics[f'acc_{kind}']:.4f})",
            )
        write_json(ctx.run_dir / "figures" / "classifier_per_class.json",
                   {"class_names": ctx.class_names, "per_class_accuracy": per_class, "confusion": confusions})
        return metrics


def make_sound_classifier(params: ClassifierParams, context: BuildContext) -> SoundClassifier:
    return SoundClassifier(params)
