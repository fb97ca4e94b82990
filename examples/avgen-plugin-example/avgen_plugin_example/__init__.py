"""An example avgen plugin: each hook registers one component."""

from __future__ import annotations

import avgen

from avgen_plugin_example.components import (
    MeanColor, MeanColorParams, MeanEnergy, MeanEnergyParams, Mel, MelParams, Tones, TonesParams,
)


@avgen.hookimpl
def register_representations(register):
    register("mel", lambda p: Mel(p), params=MelParams,
             summary="log-mel spectrogram (torchaudio); decode by mel pseudo-inverse + Griffin-Lim",
             card={"license": "MIT", "sample_rate": "any (Params)"})


@avgen.hookimpl
def register_metrics(register):
    register("mean_energy", lambda p: MeanEnergy(p), params=MeanEnergyParams,
             summary="mean energy (dB) of real and generated test audio")


@avgen.hookimpl
def register_datasets(register):
    register("tones", lambda p: Tones(p), params=TonesParams,
             summary="procedural: one sine tone and one frame colour per class (for tests and demos)")


@avgen.hookimpl
def register_encoders(register):
    register("mean_color", lambda p, device=None: MeanColor(p), params=MeanColorParams,
             summary="per-frame mean and std of R, G, B (6-d); no weights")
