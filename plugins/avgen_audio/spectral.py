"""The shared machinery of STFT-based representations: analysis, resampling and decoding.

A subclass says how a magnitude spectrogram [B, K, F] becomes its representation
(``from_magnitude``) and back (``to_magnitude``); this class turns waveforms into
magnitudes (torch.fft, or nnAudio's STFT with backend="nnaudio") and magnitudes into waveforms (an inverse STFT
whose phase comes from Griffin-Lim, a reference waveform, zeros or random numbers).
"""

from __future__ import annotations

import torch
import torchaudio
from torch import nn

from avgen import AvgenError, Representation
from avgen_audio import fourier
from avgen_audio.griffin_lim import griffin_lim_phase, random_phase
from avgen_audio.params import SpectralParams

PHASES = ("griffin_lim", "given", "zero", "random")


class SpectralRepresentation(Representation):
    """Base of the STFT-based representations (an ``avgen.Representation``)."""

    dim: int
    phases = PHASES

    def __init__(self, params: SpectralParams) -> None:
        super().__init__()
        _check(params)
        self.params = params
        self.sample_rate = params.sample_rate
        self.n_fft = params.n_fft
        self.hop_length = params.hop_length
        self.frame_hop = params.hop_length  # frames tile time every hop_length samples
        self.continues_phase = True  # decode(phase='griffin_lim', reference=sound so far) continues that sound
        self.center = params.center
        self.pad_mode = params.pad_mode
        self.n_iter = params.n_iter
        self.momentum = params.momentum
        self.register_buffer("window", fourier.make_window(params.window, params.n_fft), persistent=False)
        self.nnaudio_stft: nn.Module | None = None  # built on first encode: nnAudio imports scipy.signal (slow)

    def _apply(self, fn, recurse=True):  # .to()/.double(): rebuild the window exactly in the new dtype
        super()._apply(fn, recurse)
        exact = fourier.make_window(self.params.window, self.n_fft, torch.float64)
        self.window = exact.to(device=self.window.device, dtype=self.window.dtype)
        return self

    @property
    def bins(self) -> int:
        """K, the number of STFT bins (n_fft // 2 + 1)."""
        return self.n_fft // 2 + 1

    def frames(self, num_samples: int) -> int:
        """F for a waveform of num_samples samples."""
        return fourier.num_frames(num_samples, self.n_fft, self.hop_length, self.center)

    def encode(self, wave: torch.Tensor, sample_rate: int | None = None) -> torch.Tensor:
        """[B, T] -> [B, D, F]; resamples first when sample_rate differs from the Params'."""
        return self.from_magnitude(self.magnitude(wave, sample_rate))

    def magnitude(self, wave: torch.Tensor, sample_rate: int | None = None) -> torch.Tensor:
        """Magnitude STFT [B, K, F] of a waveform [B, T] (equal to abs(librosa.stft))."""
        wave = self.prepare(wave, sample_rate)
        if self.params.backend == "nnaudio":
            if self.nnaudio_stft is None:  # decode-only use (avgen generate) never needs it
                self.nnaudio_stft = _nnaudio_stft(self.params).to(device=self.window.device, dtype=self.window.dtype)
            return self.nnaudio_stft(wave, output_format="Magnitude")
        return self.spectrum(wave).abs().transpose(1, 2)

    def spectrum(self, wave: torch.Tensor) -> torch.Tensor:
        """Complex STFT [B, F, K] of a waveform [B, T] already at sample_rate (torch.fft)."""
        return fourier.stft(wave, self.window, self.hop_length, self.center, self.pad_mode)

    def prepare(self, wave: torch.Tensor, sample_rate: int | None = None) -> torch.Tensor:
        """Check a [B, T] waveform, resample it to sample_rate and cast it to the module's dtype."""
        if wave.dim() != 2:
            raise AvgenError(f"representation input must be a waveform batch [B, T], got shape {tuple(wave.shape)}; use wave.unsqueeze(0) for one clip")
        wave = wave.to(device=self.window.device, dtype=self.window.dtype)
        if sample_rate is not None and int(sample_rate) != self.sample_rate:
            wave = torchaudio.functional.resample(wave, int(sample_rate), self.sample_rate)
        minimum = self.n_fft // 2 + 1 if self.center and self.pad_mode == "reflect" else 1
        if not self.center:
            minimum = self.n_fft
        if wave.shape[-1] < minimum:
            raise AvgenError(f"waveform of {wave.shape[-1]} samples is shorter than the {minimum} this representation needs (n_fft {self.n_fft}); pad the clip")
        return wave

    def decode(
        self,
        rep: torch.Tensor,
        phase: str = "griffin_lim",
        reference: torch.Tensor | None = None,
        length: int | None = None,
    ) -> torch.Tensor:
        """[B, D, F] -> [B, T]; differentiable w.r.t. rep (the phase estimate is held constant).

        phase: 'griffin_lim' (n_iter fast Griffin-Lim steps; a ``reference`` [B, T'] shorter than the
        output starts the frames it covers from its phase, see ``griffin_lim``), 'given' (the phase of
        ``reference`` [B, T], which also sets the default length), 'zero' or 'random'.
        Without ``length`` a centred STFT gives hop_length * (F - 1) samples, as librosa.
        """
        if phase not in PHASES:
            raise AvgenError(f"unknown phase {phase!r} for decode; use one of {', '.join(PHASES)}")
        magnitude = self.to_magnitude(rep.to(device=self.window.device, dtype=self.window.dtype)).transpose(1, 2).contiguous()  # [B, F, K]
        if phase == "given":
            unit, length = self._reference_phase(magnitude, reference, length)
        elif phase == "zero":
            unit = torch.ones_like(magnitude, dtype=_complex(magnitude.dtype))
        elif phase == "random":
            unit = random_phase(magnitude.shape, magnitude.device, _complex(magnitude.dtype), self.params.seed)
        else:
            unit = self.griffin_lim(magnitude, length, reference)
        return fourier.istft(magnitude * unit, self.window, self.hop_length, self.center, length)

    def griffin_lim(self, magnitude: torch.Tensor, length: int | None = None,
                    reference: torch.Tensor | None = None) -> torch.Tensor:
        """Unit phase [B, F, K] for magnitude [B, F, K] by fast Griffin-Lim (no gradient).

        A ``reference`` waveform [B, T'] (the sound already made for the first T' samples, e.g. by the
        previous segment of a long video) starts the frames it covers from its phase, so that the
        result continues it instead of starting anew (``continues_phase``).
        """
        if self.params.griffin_lim_init == "random":
            init = random_phase(magnitude.shape, magnitude.device, _complex(magnitude.dtype), self.params.seed)
        else:
            init = torch.ones_like(magnitude, dtype=_complex(magnitude.dtype))
        if reference is not None:
            init = self._continued_phase(init, reference)
        return griffin_lim_phase(
            magnitude, self.window, self.hop_length, self.center, self.pad_mode,
            self.n_iter, self.momentum, init, length,
        )

    def _continued_phase(self, init: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """``init`` [B, F, K] with the frames that lie wholly within ``reference`` [B, T'] set to its phase."""
        reach = self.n_fft // 2 if self.center else self.n_fft  # samples a frame needs after its hop position
        count = min(init.shape[1], (reference.shape[-1] - reach) // self.hop_length + 1)
        if count <= 0 or reference.shape[-1] < self.n_fft:
            return init
        with torch.no_grad():
            spectrum = self.spectrum(self.prepare(reference.detach()))[:, :count]
        unit = torch.sgn(spectrum).to(init.dtype)
        init = init.clone()
        init[:, :count] = torch.where(spectrum == 0, init[:, :count], unit)
        return init

    def _reference_phase(
        self, magnitude: torch.Tensor, reference: torch.Tensor | None, length: int | None
    ) -> tuple[torch.Tensor, int]:
        if reference is None:
            raise AvgenError("decode(phase='given') needs reference=<waveform [B, T]> to take the phase from")
        with torch.no_grad():
            spectrum = self.spectrum(self.prepare(reference.detach()))
        if spectrum.shape != magnitude.shape:
            raise AvgenError(
                f"reference gives spectrum {tuple(spectrum.shape)} (B, F, K) but the representation decodes to "
                f"{tuple(magnitude.shape)}; pass a reference of the clip length the representation was made from"
            )
        unit = torch.sgn(spectrum)
        unit = torch.where(spectrum == 0, torch.ones_like(unit), unit)
        return unit, reference.shape[-1] if length is None else length

    def from_magnitude(self, magnitude: torch.Tensor) -> torch.Tensor:
        """Magnitude [B, K, F] -> representation [B, D, F]."""
        raise NotImplementedError

    def to_magnitude(self, rep: torch.Tensor) -> torch.Tensor:
        """Representation [B, D, F] -> magnitude estimate [B, K, F]."""
        raise NotImplementedError


def _complex(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def _check(params: SpectralParams) -> None:
    """Reject Params that cannot give an invertible STFT, with the fix."""
    if params.hop_length > params.n_fft:
        raise AvgenError(f"hop_length {params.hop_length} is larger than n_fft {params.n_fft}; use hop_length <= n_fft (e.g. n_fft // 4)")
    try:
        fourier.make_window(params.window, params.n_fft)
    except (ValueError, TypeError) as exc:
        raise AvgenError(f"unknown window {params.window!r} ({exc}); use a scipy.signal.get_window name such as 'hann'") from exc


def _nnaudio_stft(params: SpectralParams) -> nn.Module:
    """nnAudio's conv1d STFT with these Params (its kernels are buffers, so .to(device) moves them)."""
    from nnAudio.features import STFT

    return STFT(
        n_fft=params.n_fft,
        hop_length=params.hop_length,
        window=params.window,
        freq_scale="no",
        center=params.center,
        pad_mode=params.pad_mode,
        sr=params.sample_rate,
        output_format="Magnitude",
        verbose=False,
    )
