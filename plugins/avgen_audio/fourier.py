"""Batched rfft-based STFT, inverse STFT and overlap-add with librosa's conventions.

Spectra here are laid out [B, F, K] (frames, then bins) so each frame's bins are contiguous
for ``torch.fft``; the representations transpose to [B, K, F] at their edges.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as nnf


def make_window(name: str, n_fft: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The periodic ('fftbins') window librosa and nnAudio use, [n_fft] (scipy.signal.get_window's values)."""
    if name in ("hann", "hanning"):  # without importing scipy.signal (a second of start-up on 2 cores)
        return torch.from_numpy(periodic_hann(n_fft)).to(dtype)
    from scipy.signal import get_window

    return torch.from_numpy(np.asarray(get_window(name, n_fft, fftbins=True), dtype=np.float64)).to(dtype)


def periodic_hann(n: int) -> np.ndarray:
    """scipy.signal.get_window('hann', n, fftbins=True), computed as scipy does (general_cosine [0.5, 0.5])."""
    if n == 1:
        return np.ones(1)
    fac = np.linspace(-np.pi, np.pi, n + 1)
    window = np.zeros(n + 1)
    for k, a in enumerate((0.5, 0.5)):
        window += a * np.cos(k * fac)
    return window[:-1]


def num_frames(num_samples: int, n_fft: int, hop: int, center: bool) -> int:
    """Frames the STFT gives for num_samples samples (librosa's count)."""
    if center:
        return 1 + num_samples // hop
    return 1 + (num_samples - n_fft) // hop


def pad_signal(wave: torch.Tensor, n_fft: int, center: bool, pad_mode: str) -> torch.Tensor:
    """Pad [B, T] by n_fft // 2 on both sides when centred, as librosa does."""
    if not center:
        return wave
    pad = n_fft // 2
    return nnf.pad(wave.unsqueeze(1), (pad, pad), mode=pad_mode).squeeze(1)


def frame_spectrum(padded: torch.Tensor, window: torch.Tensor, hop: int) -> torch.Tensor:
    """Windowed frames of a padded [B, L] signal -> complex spectrum [B, F, K]."""
    frames = padded.unfold(-1, window.shape[0], hop) * window
    return torch.fft.rfft(frames, dim=-1)


def stft(wave: torch.Tensor, window: torch.Tensor, hop: int, center: bool, pad_mode: str) -> torch.Tensor:
    """Complex STFT of [B, T] -> [B, F, K], equal to librosa.stft transposed."""
    return frame_spectrum(pad_signal(wave, window.shape[0], center, pad_mode), window, hop)


def overlap_add(frames: torch.Tensor, hop: int) -> torch.Tensor:
    """Sum frames [B, F, N] placed every hop samples -> [B, N + hop * (F - 1)]; differentiable."""
    batch, count, size = frames.shape
    length = size + hop * (count - 1)
    if size % hop == 0:  # shifted adds of hop-sized blocks: cheaper than fold on CPU
        ratio = size // hop
        blocks = frames.reshape(batch, count, ratio, hop)
        out = frames.new_zeros(batch, count + ratio - 1, hop)
        for j in range(ratio):
            out[:, j : j + count] += blocks[:, :, j]
        return out.reshape(batch, length)
    folded = nnf.fold(frames.transpose(1, 2), output_size=(1, length), kernel_size=(1, size), stride=(1, hop))
    return folded.reshape(batch, length)


def window_sumsquare(window: torch.Tensor, count: int, hop: int) -> torch.Tensor:
    """Sum of squared windows over count frames, [n_fft + hop * (count - 1)] (librosa's)."""
    squared = (window.double() ** 2).expand(1, count, -1)
    return overlap_add(squared.contiguous(), hop)[0]


def synthesis_gain(window: torch.Tensor, count: int, hop: int, start: int, length: int) -> torch.Tensor:
    """Per-sample 1 / window_sumsquare on [start, start + length) and 0 elsewhere.

    Multiplying the overlap-added frames by it gives librosa's istft before trimming, with
    the samples that trimming (and constant re-padding) would drop already set to zero.
    """
    wss = window_sumsquare(window, count, hop)
    tiny = torch.finfo(window.dtype).tiny
    gain = torch.where(wss > tiny, 1.0 / wss.clamp_min(tiny), torch.ones_like(wss))
    keep = torch.zeros_like(gain)
    keep[start : start + length] = 1.0
    return (gain * keep).to(window.dtype)


def synthesis_span(n_fft: int, hop: int, count: int, center: bool, length: int | None) -> tuple[int, int]:
    """(first kept sample, signal length) of an inverse STFT of ``count`` frames (librosa's default length)."""
    start = n_fft // 2 if center else 0
    if length is None:
        length = hop * (count - 1) if center else n_fft + hop * (count - 1)
    return start, length


def istft(
    spec: torch.Tensor, window: torch.Tensor, hop: int, center: bool, length: int | None = None
) -> torch.Tensor:
    """Inverse of :func:`stft`: complex [B, F, K] -> [B, T], like librosa.istft; differentiable."""
    n_fft = window.shape[0]
    count = spec.shape[1]
    start, length = synthesis_span(n_fft, hop, count, center, length)
    frames = torch.fft.irfft(spec, n=n_fft, dim=-1) * window
    gain = synthesis_gain(window, count, hop, start, length)
    signal = overlap_add(frames, hop) * gain
    out = signal[:, start : start + length]
    if out.shape[-1] < length:  # asked for more samples than the frames cover
        out = nnf.pad(out, (0, length - out.shape[-1]))
    return out
