"""flow_matching: conditional flow matching (rectified flow) on the recipe's representation.

Training (Lipman et al. 2023; Liu et al. 2023): a clip's representation, normalised per bin, is
x1; x0 is Gaussian noise; on the straight path x_t = (1 - t) x0 + t x1 the network predicts the
velocity v(x_t, t, video) and is trained towards x1 - x0 (the loss ``flow_matching_mse``).
Generation integrates dx/dt = v from t = 0 to 1 with Euler, midpoint or Heun steps; with
classifier-free guidance (Ho & Salimans 2022) v = v_cond + w (v_cond - v_uncond), where the
unconditional velocity comes from a learned null video that replaced 10 % of training clips.
With ``base_sample`` the flow generates the residual to the class's base sample (its mean training
representation, normalised), as CAN (Chen et al. 2018) adds one to its residual: the true class's in
training, the class head's argmax at generation, so the material the head predicts decides the sound's
prototype and the flow only its variation.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avgen import AvgenError, BuildContext, Generator, GeneratorShape, replicate_to_steps
from avgen_flow.params import FlowParams

STD_FLOOR = 1e-3  # normalised bins never divide by less (silent bins of the training set)


def _groups(channels: int) -> int:
    return next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)


class TimeEmbedding(nn.Module):
    """t in [0, 1] -> [B, H]: sinusoids of 1000 t, then a two-layer MLP."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.half = max(1, hidden // 2)
        self.mlp = nn.Sequential(nn.Linear(2 * self.half, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: Tensor) -> Tensor:
        freqs = torch.exp(-math.log(10000.0) * torch.arange(self.half, device=t.device, dtype=torch.float32) / self.half)
        angles = 1000.0 * t.float()[:, None] * freqs[None]
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=-1).to(self.mlp[0].weight.dtype))


class ResBlock(nn.Module):
    """Pre-norm residual block over time, modulated (FiLM) by the time + clip embedding."""

    def __init__(self, hidden: int, kernel: int, dilation: int, dropout: float) -> None:
        super().__init__()
        pad = dilation * (kernel // 2)
        self.norm1 = nn.GroupNorm(_groups(hidden), hidden)
        self.conv1 = nn.Conv1d(hidden, hidden, kernel, padding=pad, dilation=dilation)
        self.film = nn.Linear(hidden, 2 * hidden)
        self.norm2 = nn.GroupNorm(_groups(hidden), hidden)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv1d(hidden, hidden, kernel, padding=pad, dilation=dilation)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        y = self.conv1(F.silu(self.norm1(h)))
        scale, shift = self.film(F.silu(emb)).chunk(2, dim=-1)
        y = self.norm2(y) * (1 + scale[..., None]) + shift[..., None]
        return h + self.conv2(self.dropout(F.silu(y)))


class VelocityNet(nn.Module):
    """v(x_t [B, D, F], t [B], frames [B, N, E], clip condition [B, E]) -> [B, D, F].

    The frames are projected first and then replicated to the F steps (paper section 3.4's
    alignment), so the projection costs N, not F, rows per clip."""

    def __init__(self, params: FlowParams, shape: GeneratorShape) -> None:
        super().__init__()
        hidden = params.hidden
        self.inp = nn.Conv1d(shape.rep_dim, hidden, 1)
        self.frame_cond = nn.Linear(shape.feature_dim, hidden)
        self.clip_cond = nn.Linear(shape.feature_dim, hidden)
        self.time = TimeEmbedding(hidden)
        self.class_embed = (nn.Linear(shape.num_classes, hidden, bias=False)
                            if params.class_condition and shape.num_classes > 0 else None)
        self.blocks = nn.ModuleList(ResBlock(hidden, params.kernel, 2 ** (i % 4), params.dropout)
                                    for i in range(params.blocks))
        self.out_norm = nn.GroupNorm(_groups(hidden), hidden)
        self.out = nn.Conv1d(hidden, shape.rep_dim, 1)

    def forward(self, x: Tensor, t: Tensor, frames: Tensor, clip: Tensor, probs: Tensor | None) -> Tensor:
        h = self.inp(x) + replicate_to_steps(self.frame_cond(frames), x.shape[-1]).transpose(1, 2)
        emb = self.time(t) + self.clip_cond(clip)
        if self.class_embed is not None and probs is not None:
            emb = emb + self.class_embed(probs.to(emb.dtype))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(F.silu(self.out_norm(h)))


class FlowMatching(Generator):
    """The flow_matching generator: ``forward`` samples s'; ``training_outputs`` gives the velocities."""

    provides = frozenset({"rep", "velocity", "velocity_target"})  # and logits, probs with a class head (__init__)

    def __init__(self, params: FlowParams, shape: GeneratorShape) -> None:
        super().__init__()
        if params.kernel % 2 == 0:
            raise AvgenError(f"flow_matching: kernel must be odd (got {params.kernel}) so frames stay aligned")
        self.params, self.shape = params, shape
        self.net = VelocityNet(params, shape)
        self.null_video = nn.Parameter(torch.zeros(shape.feature_dim))  # the 'no video' condition
        has_head = params.class_head or params.class_condition
        self.class_head = nn.Linear(shape.feature_dim, shape.num_classes) if has_head and shape.num_classes > 0 else None
        if params.class_condition and self.class_head is None:
            raise AvgenError("flow_matching: class_condition needs a dataset with classes (num_classes > 0)")
        if self.class_head is not None:
            self.provides = self.provides | {"logits", "probs"}
        if params.base_sample and self.class_head is None:
            raise AvgenError("flow_matching: base_sample needs a dataset with classes and a class head "
                             "(class_head = true)")
        if params.residual_scale != 1.0 and not params.base_sample:
            raise AvgenError("flow_matching: residual_scale scales the residual to the base sample; it needs "
                             "base_sample = true")
        if params.base_sample:  # normalised class means [C, D, F]; only such models carry the buffer
            self.register_buffer("base_samples", torch.zeros(shape.num_classes, shape.rep_dim, shape.steps))
        self.register_buffer("rep_mean", torch.zeros(shape.rep_dim, 1))
        self.register_buffer("rep_std", torch.ones(shape.rep_dim, 1))
        self._stats_ready = False
        self.register_load_state_dict_post_hook(_mark_stats_ready)

    # ------------------------------------------------------------ contract hooks

    def prepare(self, train: Mapping[str, Tensor]) -> None:
        """Per-bin mean and standard deviation of the training representations (float64, chunked)."""
        reps = train["rep"]
        if reps.dim() != 3 or tuple(reps.shape[1:]) != (self.shape.rep_dim, self.shape.steps) or reps.shape[0] == 0:
            raise AvgenError(f"flow_matching: training reps must be [M>0, {self.shape.rep_dim}, {self.shape.steps}], "
                             f"got {tuple(reps.shape)}")
        total = torch.zeros(self.shape.rep_dim, dtype=torch.float64)
        squares = torch.zeros_like(total)
        rows = max(1, (16 << 20) // (8 * self.shape.rep_dim * self.shape.steps))
        for start in range(0, reps.shape[0], rows):
            chunk = reps[start:start + rows].detach().to("cpu", torch.float64)
            total += chunk.sum(dim=(0, 2))
            squares += chunk.square().sum(dim=(0, 2))
        count = reps.shape[0] * self.shape.steps
        mean = total / count
        std = (squares / count - mean.square()).clamp_min(0).sqrt().clamp_min(STD_FLOOR)
        self.rep_mean.copy_(mean[:, None].to(self.rep_mean))
        self.rep_std.copy_(std[:, None].to(self.rep_std))
        if self.params.base_sample:
            self.base_samples.copy_(self.normalise(_class_means(reps, train["label"], self.shape.num_classes)
                                                   .to(self.rep_mean)))
        self._stats_ready = True

    def training_outputs(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """A random time and noise per clip; in eval mode (validation) both come from ``seed``, so
        validation losses are comparable across epochs."""
        self._check_ready()
        features = batch["features"]
        x1 = self.normalise(batch["rep"].to(features.device, self.rep_mean.dtype))
        base = self.base(batch["label"].to(features.device, torch.long)) if self.params.base_sample else 0.0
        x1 = x1 - base
        count = x1.shape[0]
        generator = None if self.training else torch.Generator(device=x1.device).manual_seed(self.params.seed)
        x0 = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
        t = self.sample_time(count, x1.device, generator)
        drop = (torch.rand(count, device=x1.device) < self.params.cond_dropout) if self.training else None
        logits = self.class_logits(features)
        probs = logits.float().softmax(-1) if logits is not None else None
        x_t = (1 - t[:, None, None]) * x0 + t[:, None, None] * x1
        velocity = self.net(x_t, t, *self.condition(features, drop), probs)
        outputs = {"velocity": velocity, "velocity_target": x1 - x0,
                   "rep": self.denormalise(x_t + (1 - t[:, None, None]) * velocity + base)}  # one-step estimate
        if logits is not None:
            outputs.update(logits=logits, probs=probs)
        return outputs

    def mean_outputs(self, train: Mapping[str, Tensor], count: int) -> dict[str, Tensor]:
        outputs = super().mean_outputs(train, count)
        if self.class_head is not None:
            labels = train["label"][train["label"] >= 0].long()
            prior = torch.bincount(labels, minlength=self.shape.num_classes).float() if labels.numel() \
                else torch.ones(self.shape.num_classes)
            outputs["probs"] = (prior / prior.sum()).expand(count, self.shape.num_classes)
        return outputs

    def class_probabilities(self, outputs: Mapping[str, Tensor]) -> Tensor | None:
        return outputs.get("probs") if self.class_head is not None else None

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        """Sample s' for each clip: ``steps`` solver steps from the seed's noise, with guidance."""
        logits = self.class_logits(self._checked(features))
        probs = logits.float().softmax(-1) if logits is not None else None
        return self._sample(features, logits, probs, probs.argmax(-1) if probs is not None else None)

    def class_outputs(self, features: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """``avgen generate --material``: the flow's class condition one-hot at ``labels`` [B]; ``probs`` says
        so and ``video_probs`` keeps what the video alone predicts."""
        logits = self.class_logits(self._checked(features))
        if not self.params.class_condition or logits is None:
            raise AvgenError("flow_matching: this model is not class-conditioned (class_condition = false), so "
                             "--material has nothing to force; train with class_condition = true")
        labels = labels.to(features.device, torch.long)
        if labels.shape != features.shape[:1] or bool(((labels < 0) | (labels >= self.shape.num_classes)).any()):
            raise AvgenError(f"flow_matching: forced classes must be [B] indices below {self.shape.num_classes}, "
                             f"got {labels.tolist()}")
        forced = F.one_hot(labels, self.shape.num_classes).float()
        outputs = self._sample(features, logits, forced, labels)
        outputs["video_probs"] = logits.float().softmax(-1)
        return outputs

    def _checked(self, features: Tensor) -> Tensor:
        self._check_ready()
        if features.dim() != 3:
            raise AvgenError(f"flow_matching: features must be [B, N, feature_dim], got {tuple(features.shape)}")
        return features

    def _sample(self, features: Tensor, logits: Tensor | None, probs: Tensor | None,
                classes: Tensor | None) -> dict[str, Tensor]:
        p = self.params
        count = features.shape[0]
        noise = torch.randn(self.shape.rep_dim, self.shape.steps, generator=torch.Generator().manual_seed(p.seed))
        x = (p.temperature * noise).to(features.device, self.rep_mean.dtype).expand(count, -1, -1).contiguous()
        frames, clip = self.condition(features, None)
        if p.guidance > 0:  # one network call for the conditional and the unconditional halves
            null_frames, null_clip = self.condition(features, torch.ones(count, dtype=torch.bool, device=features.device))
            frames, clip = torch.cat([frames, null_frames]), torch.cat([clip, null_clip])
            probs_in = torch.cat([probs, probs]) if probs is not None else None
        else:
            probs_in = probs

        def velocity(x: Tensor, t: float) -> Tensor:
            xs = torch.cat([x, x]) if p.guidance > 0 else x
            v = self.net(xs, torch.full((xs.shape[0],), t, device=x.device), frames, clip, probs_in)
            if p.guidance > 0:
                v_cond, v_uncond = v.chunk(2)
                return v_cond + p.guidance * (v_cond - v_uncond)
            return v

        if p.base_sample and p.residual_scale == 0:  # the base sample alone: no residual, so no solver steps
            x = torch.zeros_like(x)
        else:
            x = integrate(velocity, x, p.steps, p.sampler)
        if p.base_sample:
            if p.residual_scale != 1.0:
                x = p.residual_scale * x
            x = x + self.base(classes)
        outputs = {"rep": self.denormalise(x)}
        if logits is not None:
            outputs.update(logits=logits, probs=probs)
        return outputs

    # ------------------------------------------------------------ pieces

    def base(self, labels: Tensor) -> Tensor:
        """[B, D, F] normalised base samples of ``labels`` [B]; unlabelled clips (< 0) get 0, the global mean."""
        bases = self.base_samples.to(self.rep_mean.dtype)[labels.clamp_min(0)]
        return torch.where((labels >= 0)[:, None, None], bases, torch.zeros_like(bases))

    def normalise(self, rep: Tensor) -> Tensor:
        return (rep - self.rep_mean) / self.rep_std

    def denormalise(self, x: Tensor) -> Tensor:
        return x * self.rep_std + self.rep_mean

    def sample_time(self, count: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
        if self.params.time_sampling == "uniform":
            return torch.rand(count, generator=generator, device=device)
        return torch.sigmoid(torch.randn(count, generator=generator, device=device))

    def condition(self, features: Tensor, drop: Tensor | None) -> tuple[Tensor, Tensor]:
        """(frame features [B, N, E], clip feature [B, E]); clips where ``drop`` get the null video."""
        features = features.to(self.null_video.dtype)
        if drop is not None:
            features = torch.where(drop[:, None, None], self.null_video.expand_as(features), features)
        return features, features.mean(dim=1)

    def class_logits(self, features: Tensor) -> Tensor | None:
        """[B, C] logits of the class head (None without one); with ``class_pooling = "frame_probs"`` the log of the
        mean of the per-frame probabilities, so their softmax is that mean."""
        if self.class_head is None:
            return None
        features = features.to(self.null_video.dtype)
        if self.params.class_pooling == "frame_probs":
            return self.class_head(features).float().softmax(-1).mean(dim=1).clamp_min(1e-12).log()
        return self.class_head(features.mean(dim=1))

    def _check_ready(self) -> None:
        if not self._stats_ready:
            raise AvgenError("flow_matching: normalisation statistics are not set; call prepare(train) or load a checkpoint")


def integrate(velocity, x: Tensor, steps: int, sampler: str) -> Tensor:
    """Solve dx/dt = velocity(x, t) from t = 0 to 1 in ``steps`` equal steps."""
    dt = 1.0 / steps
    for i in range(steps):
        t = i * dt
        v = velocity(x, t)
        if sampler == "euler":
            x = x + dt * v
        elif sampler == "midpoint":
            x = x + dt * velocity(x + 0.5 * dt * v, t + 0.5 * dt)
        elif sampler == "heun":
            x = x + 0.5 * dt * (v + velocity(x + dt * v, t + dt))
        else:
            raise AvgenError(f"flow_matching: unknown sampler {sampler!r}; use euler, midpoint or heun")
    return x


def _class_means(reps: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """[C, D, F] float64 means of reps [M, D, F] per label (chunked); a class without clips gets the global mean."""
    labels = labels.to("cpu", torch.long)
    if labels.shape != reps.shape[:1] or (labels.numel() and int(labels.max()) >= num_classes):
        raise AvgenError(f"flow_matching: base samples need labels [M] below {num_classes}, got {tuple(labels.shape)}")
    sums = torch.zeros(num_classes + 1, *reps.shape[1:], dtype=torch.float64)
    counts = torch.zeros(num_classes + 1, dtype=torch.float64)
    slots = torch.where(labels < 0, num_classes, labels)
    rows = max(1, (16 << 20) // (8 * reps.shape[1] * reps.shape[2]))
    for start in range(0, reps.shape[0], rows):
        sums.index_add_(0, slots[start:start + rows], reps[start:start + rows].detach().to("cpu", torch.float64))
        counts.index_add_(0, slots[start:start + rows], torch.ones(len(slots[start:start + rows]), dtype=torch.float64))
    means = sums[:num_classes] / counts[:num_classes].clamp_min(1)[:, None, None]
    means[counts[:num_classes] == 0] = sums.sum(0) / counts.sum()
    return means


def _mark_stats_ready(module: nn.Module, incompatible_keys: object) -> None:
    missing = getattr(incompatible_keys, "missing_keys", [])
    if not any(key.endswith(("rep_mean", "rep_std")) for key in missing):
        module._stats_ready = True


def make_flow_matching(params: FlowParams, context: BuildContext) -> FlowMatching:
    return FlowMatching(params, context.require_shape("flow_matching"))
