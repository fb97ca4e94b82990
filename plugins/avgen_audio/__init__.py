"""Audio representations: magnitude STFT and ERB cochleagram, with Griffin-Lim/ISTFT decoding."""

from __future__ import annotations

from avgen import hookimpl
from avgen_audio.cochleagram import CochleagramRepresentation, make_cochleagram
from avgen_audio.params import CochleagramParams, StftParams
from avgen_audio.stft import StftRepresentation, make_stft

__all__ = ["CochleagramParams", "CochleagramRepresentation", "StftParams", "StftRepresentation"]

# Version 2 encodes with torch.fft instead of nnAudio's conv1d STFT (same magnitudes to float32 rounding, 5x
# faster on CPU); a run or model recorded at version 1 keeps nnAudio (avgen._core.recipe.validate_recipe).
VERSION = "2"
EARLIER_DEFAULTS = {"1": {"backend": "nnaudio"}}


@hookimpl
def register_representations(register):
    """Register 'stft' and 'cochleagram'."""
    register(
        "stft",
        make_stft,
        params=StftParams,
        summary="Magnitude STFT (Hann 2048 / hop 512, centred) by torch.fft (or nnAudio); Griffin-Lim or given-phase ISTFT decode",
        card={"dim": "n_fft // 2 + 1", "paper": "POCAN (Chen et al. 2018), Griffin & Lim 1984, Perraudin et al. 2013",
              "library": "torch.fft; nnAudio 0.3.4 with backend = 'nnaudio'"},
        version=VERSION,
        earlier_defaults=EARLIER_DEFAULTS,
    )
    register(
        "cochleagram",
        make_cochleagram,
        params=CochleagramParams,
        summary="42 ERB-spaced cosine bands over the STFT, envelopes ** 0.3; pseudo-inverse + Griffin-Lim decode",
        card={"dim": "n_bands", "paper": "Owens et al. 2016; McDermott & Simoncelli 2011; Glasberg & Moore 1990",
              "library": "torch.fft; nnAudio 0.3.4 with backend = 'nnaudio'"},
        version=VERSION,
        earlier_defaults=EARLIER_DEFAULTS,
    )
