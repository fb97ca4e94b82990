"""Audio representations: magnitude STFT and ERB cochleagram, with Griffin-Lim/ISTFT decoding."""

from __future__ import annotations

from avgen import hookimpl
from avgen_audio.cochleagram import CochleagramRepresentation, make_cochleagram
from avgen_audio.params import CochleagramParams, StftParams
from avgen_audio.stft import StftRepresentation, make_stft

__all__ = ["CochleagramParams", "CochleagramRepresentation", "StftParams", "StftRepresentation"]


@hookimpl
def register_representations(register):
    """Register 'stft' and 'cochleagram'."""
    register(
        "stft",
        make_stft,
        params=StftParams,
        summary="Magnitude STFT (Hann 2048 / hop 512, centred) on nnAudio; Griffin-Lim or given-phase ISTFT decode",
        card={"dim": "n_fft // 2 + 1", "paper": "POCAN (Chen et al. 2018), Griffin & Lim 1984, Perraudin et al. 2013", "library": "nnAudio 0.3.4"},
    )
    register(
        "cochleagram",
        make_cochleagram,
        params=CochleagramParams,
        summary="42 ERB-spaced cosine bands over the STFT, envelopes ** 0.3; pseudo-inverse + Griffin-Lim decode",
        card={"dim": "n_bands", "paper": "Owens et al. 2016; McDermott & Simoncelli 2011; Glasberg & Moore 1990", "library": "nnAudio 0.3.4"},
    )
