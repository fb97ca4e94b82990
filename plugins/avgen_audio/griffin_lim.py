"""Fast Griffin-Lim (Perraudin et al. 2013, librosa's ``griffinlim``), batched with torch.fft.

The loop works on the padded overlap-add signal: one irfft, overlap-add, a per-sample gain
that also does librosa's trim-and-zero-pad, then framing and an rfft per iteration, with
clips processed in cache-sized chunks on CPU. Only the phase comes out of the loop; the
caller multiplies it with the magnitude in a differentiable inverse STFT.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as nnf

from avgen_audio.fourier import overlap_add, synthesis_gain, synthesis_span

CPU_CHUNK_FRAMES = 256  # frames per chunk on CPU: keeps a chunk's spectra in cache


def random_phase(shape: torch.Size, device: torch.device, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Unit phasors with uniform random angles, reproducible from seed (made on CPU)."""
    generator = torch.Generator().manual_seed(seed)
    angle = torch.rand(shape, generator=generator, dtype=torch.float64) * (2 * math.pi)
    return torch.polar(torch.ones_like(angle), angle).to(device=device, dtype=dtype)


def griffin_lim_phase(
    magnitude: torch.Tensor,
    window: torch.Tensor,
    hop: int,
    center: bool,
    pad_mode: str,
    n_iter: int,
    momentum: float,
    init: torch.Tensor,
    length: int | None = None,
) -> torch.Tensor:
    """Unit-modulus phase [B, F, K] for magnitude [B, F, K] after n_iter fast Griffin-Lim steps.

    ``init`` is the starting phase [B, F, K] (complex); ``length`` is the length of the
    signal the loop re-analyses (librosa's ``length``; default hop * (F - 1) when centred).
    """
    with torch.inference_mode():
        magnitude = magnitude.detach()
        phase = init.detach().clone()
        count = magnitude.shape[1]
        if magnitude.device.type == "cpu":
            per_chunk = max(1, CPU_CHUNK_FRAMES // count)
        else:
            per_chunk = magnitude.shape[0]
        for begin in range(0, magnitude.shape[0], per_chunk):
            end = begin + per_chunk
            phase[begin:end] = _iterate(
                magnitude[begin:end], phase[begin:end], window, hop, center, pad_mode, n_iter, momentum, length
            )
    return phase.clone()  # a normal tensor again, usable in autograd graphs


def _iterate(
    magnitude: torch.Tensor,
    phase: torch.Tensor,
    window: torch.Tensor,
    hop: int,
    center: bool,
    pad_mode: str,
    n_iter: int,
    momentum: float,
    length: int | None,
) -> torch.Tensor:
    """The Griffin-Lim loop on one chunk; returns the final unit phase."""
    n_fft = window.shape[0]
    count = magnitude.shape[1]
    start, length = synthesis_span(n_fft, hop, count, center, length)
    gain = synthesis_gain(window, count, hop, start, length)
    reflect = center and pad_mode == "reflect"
    if reflect:  # re-pad by reflection after trimming; needs the trimmed signal
        gain = gain[start : start + length]
    decay = momentum / (1.0 + momentum)
    tiny = torch.finfo(magnitude.dtype).tiny
    # Broadcasting multiplies are several times slower than same-shape ones on CPU, so
    # the window and gain are expanded to full size once.
    batch = magnitude.shape[0]
    frame_window = window.expand(batch, count, n_fft).contiguous()
    gain = gain.expand(batch, -1).contiguous()
    spectrum = magnitude * phase  # complex [B, F, K], the current estimate
    spectrum_parts = torch.view_as_real(spectrum)
    previous = torch.zeros_like(spectrum)  # the last re-analysed spectrum (tprev)
    norm = torch.empty_like(magnitude)
    scale = torch.empty_like(spectrum_parts)
    for step in range(n_iter):
        frames = torch.fft.irfft(spectrum, n=n_fft, dim=-1)
        frames *= frame_window
        signal = overlap_add(frames, hop)
        if reflect:
            trimmed = signal[:, start : start + length] * gain
            signal = nnf.pad(trimmed.unsqueeze(1), (start, start), mode="reflect").squeeze(1)
        else:
            signal *= gain
        rebuilt = torch.fft.rfft(signal.unfold(-1, n_fft, hop)[:, :count] * frame_window, dim=-1)
        # spectrum = magnitude * sgn(rebuilt - decay * previous), in real arithmetic
        torch.sub(rebuilt, previous, alpha=decay if step else 0.0, out=spectrum)
        re, im = spectrum_parts[..., 0], spectrum_parts[..., 1]
        torch.mul(re, re, out=norm).addcmul_(im, im).clamp_min_(tiny).rsqrt_().mul_(magnitude)
        scale[..., 0] = norm
        scale[..., 1] = norm
        spectrum_parts *= scale
        previous = rebuilt
    return torch.sgn(spectrum) if n_iter else phase
