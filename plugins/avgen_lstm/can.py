"""can_lstm: class probabilities plus a residual over the predicted class's base sample (paper Eq. 3-5)."""

from __future__ import annotations

import warnings
from typing import Mapping

import torch
from torch import nn

from avgen import AvgenError, BuildContext, Generator, GeneratorShape
from avgen_lstm.backbone import CanParams, FrameLSTM


class CanLSTM(Generator):
    """The CAN/POCAN generator: f_i = W h_i + b split into d_c class logits and d_s residual values."""

    provides = frozenset({"rep", "residual", "logits", "probs"})

    def __init__(self, params: CanParams, shape: GeneratorShape) -> None:
        super().__init__()
        if shape.num_classes < 1:
            raise AvgenError(f"can_lstm needs a dataset with classes, got num_classes={shape.num_classes}; use owens_lstm")
        self.shape = shape
        self.base = params.base
        self.teacher_forcing = params.teacher_forcing
        self.net = FrameLSTM(params, shape.feature_dim, shape.steps, shape.num_classes + shape.rep_dim)
        # A_j, one [D, F] mean representation per class; a buffer so checkpoints carry it.
        self.register_buffer("base_samples", torch.zeros(shape.num_classes, shape.rep_dim, shape.steps))
        self._base_ready = False
        self.register_load_state_dict_post_hook(_mark_base_ready)

    def prepare(self, train: Mapping[str, torch.Tensor]) -> None:
        """Base samples from the training split, before training."""
        self.set_base_samples(train["rep"], train["label"])

    def set_base_samples(self, reps: torch.Tensor, labels: torch.Tensor) -> None:
        """A_j = mean training representation of class j; classes without clips get the global mean."""
        self.base_samples.copy_(class_means(reps, labels, self.shape).to(self.base_samples))
        self._base_ready = True

    def training_outputs(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Teacher forcing (a Param, off in the paper) adds the true class's base sample in training."""
        return self(batch["features"], labels=batch["label"] if self.teacher_forcing else None)

    def mean_outputs(self, train: Mapping[str, torch.Tensor], count: int) -> dict[str, torch.Tensor]:
        """The video-blind predictor: the mean representation and the training class frequencies as p."""
        outputs = super().mean_outputs(train, count)
        labels = train["label"][train["label"] >= 0].long()
        num_classes = self.shape.num_classes
        prior = torch.bincount(labels, minlength=num_classes).float() if labels.numel() else torch.ones(num_classes)
        return {**outputs, "probs": (prior / prior.sum()).expand(count, num_classes)}

    def class_probabilities(self, outputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return outputs["probs"]

    def class_outputs(self, features: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """s' = d + A_label (the forced class's base sample); ``probs`` is one-hot at that class and
        ``video_probs`` keeps what the video alone predicts."""
        logits, residual, probs = self._heads(features)
        labels = labels.to(residual.device, torch.long)
        if labels.shape != residual.shape[:1] or bool(((labels < 0) | (labels >= self.shape.num_classes)).any()):
            raise AvgenError(f"can_lstm: forced classes must be [B] indices below {self.shape.num_classes}, "
                             f"got {labels.tolist()}")
        rep = residual + self.base_samples.to(residual.dtype)[labels]
        forced = torch.nn.functional.one_hot(labels, self.shape.num_classes).to(probs.dtype)
        return {"rep": rep, "residual": residual, "logits": logits, "probs": forced, "video_probs": probs}

    def _heads(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits [B, F, C], residual d [B, D, F], p [B, C]) of the network."""
        if not self._base_ready:
            raise AvgenError("can_lstm: base samples are not set; call set_base_samples(train reps, labels) or load a checkpoint")
        out = self.net(features)  # [B, F, C + D]
        num_classes = self.shape.num_classes
        logits = out[..., :num_classes]
        residual = out[..., num_classes:].transpose(1, 2)  # d: [B, D, F]
        probs = torch.softmax(logits.float(), dim=-1).mean(dim=1)  # Eq. 4: mean over steps
        return logits, residual, probs

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits, residual, probs = self._heads(features)
        base_samples = self.base_samples.to(residual.dtype)
        predicted = probs.argmax(dim=-1)
        if self.training and labels is not None:  # teacher forcing: the true class's base sample
            base = base_samples[torch.where(labels >= 0, labels, predicted)]
        elif self.base == "soft":
            base = torch.einsum("bc,cdf->bdf", probs.to(residual.dtype), base_samples)
        else:
            base = base_samples[predicted]
        return {"rep": residual + base, "residual": residual, "logits": logits, "probs": probs}


def class_means(reps: torch.Tensor, labels: torch.Tensor, shape: GeneratorShape) -> torch.Tensor:
    """[C, D, F] per-class means of reps [M, D, F] (float64 sums, chunked); labels < 0 count only globally."""
    expected = (shape.rep_dim, shape.steps)
    if reps.dim() != 3 or tuple(reps.shape[1:]) != expected or labels.shape != reps.shape[:1]:
        raise AvgenError(
            f"base samples: expected reps [M, {expected[0]}, {expected[1]}] and labels [M], "
            f"got {tuple(reps.shape)} and {tuple(labels.shape)}; check the representation matches the generator shape"
        )
    if reps.shape[0] == 0:
        raise AvgenError("base samples: the training split is empty; base samples need training clips")
    num_classes = shape.num_classes
    labels = labels.to(device=reps.device, dtype=torch.long)
    if int(labels.max()) >= num_classes:
        raise AvgenError(f"base samples: label {int(labels.max())} is out of range for {num_classes} classes")
    sums = torch.zeros(num_classes + 1, *expected, dtype=torch.float64, device=reps.device)
    counts = torch.zeros(num_classes + 1, dtype=torch.float64, device=reps.device)
    slot = torch.where(labels < 0, num_classes, labels)  # unlabelled clips go to an extra slot
    rows = max(1, (16 << 20) // (8 * expected[0] * expected[1]))  # float64 chunks of about 16 MiB
    for start in range(0, reps.shape[0], rows):
        chunk = reps[start : start + rows].to(torch.float64)
        sums.index_add_(0, slot[start : start + rows], chunk)
        counts.index_add_(0, slot[start : start + rows], torch.ones(chunk.shape[0], dtype=torch.float64, device=reps.device))
    global_mean = sums.sum(0) / counts.sum()
    means = sums[:num_classes] / counts[:num_classes].clamp_min(1)[:, None, None]
    missing = (counts[:num_classes] == 0).nonzero().flatten().tolist()
    if missing:
        warnings.warn(
            f"base samples: classes {missing} have no training clips; they get the global mean representation",
            stacklevel=3,
        )
        means[missing] = global_mean
    return means.to(torch.float32)


def _mark_base_ready(module: nn.Module, incompatible_keys: object) -> None:
    """A loaded state dict that held the base samples makes the model usable."""
    missing = getattr(incompatible_keys, "missing_keys", [])
    if not any(key.endswith("base_samples") for key in missing):
        module._base_ready = True


def make_can_lstm(params: CanParams, context: BuildContext) -> CanLSTM:
    return CanLSTM(params, context.require_shape("can_lstm"))
