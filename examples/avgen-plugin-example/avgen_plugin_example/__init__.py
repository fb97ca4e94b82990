"""An example avgen plugin: each hook registers one component of its kind."""

from __future__ import annotations

import avgen

from avgen_plugin_example.components import (
    FrameLinear, FrameLinearParams, MeanColor, MeanColorParams, MeanEnergy, MeanEnergyParams, Mel,
    MelParams, RepL1, RepL1Params, Tones, TonesParams,
)


@avgen.hookimpl
def register_representations(register):
    register("mel", lambda p, context: Mel(p), params=MelParams,
             summary="log-mel spectrogram (torchaudio); decode by mel pseudo-inverse + Griffin-Lim",
             card={"license": "MIT", "sample_rate": "any (Params)"})


@avgen.hookimpl
def register_metrics(register):
    register("mean_energy", lambda p, context: MeanEnergy(p), params=MeanEnergyParams,
             summary="mean energy (dB) of real and generated test audio")


@avgen.hookimpl
def register_datasets(register):
    register("tones", lambda p, context: Tones(p), params=TonesParams,
             summary="procedural: one sine tone and one frame colour per class (for tests and demos)")


@avgen.hookimpl
def register_encoders(register):
    register("mean_color", lambda p, context: MeanColor(p), params=MeanColorParams,
             summary="per-frame mean and std of R, G, B (6-d); no weights")


@avgen.hookimpl
def register_generators(register):
    register("frame_linear", lambda p, context: FrameLinear(p, context.require_shape("frame_linear")),
             params=FrameLinearParams, summary="each output frame from the frame shown at that time, by a small MLP")


@avgen.hookimpl
def register_losses(register):
    register("rep_l1", lambda p, context: RepL1(p), params=RepL1Params,
             summary="L1 between the generated and the real representation")
