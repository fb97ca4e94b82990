"""Audio files: reading (soundfile, or PyAV for other containers), resampling, fitting a length, writing wav."""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import av
import numpy as np
import soundfile as sf
import torch

from avgen._core.atomic import atomic_path
from avgen._core.errors import AvgenError
from avgen._core.media import (PAD_WARNING_SECONDS, TRUNCATION_TOLERANCE, MediaWarning, PathLike, _check_file,
                               _is_soundfile, _open, _reason, _stream_end, media_origin)


def read_audio(
    path: PathLike,
    sample_rate: int | None = None,
    start: float = 0.0,
    duration: float | None = None,
    mono: bool = True,
    allow_silent: bool = False,
) -> tuple[torch.Tensor, int]:
    """Audio of a file (wav/flac via soundfile, anything else via PyAV): (float32 wave, rate).

    The wave is [T] when ``mono`` (channels averaged) else [C, T]. With ``sample_rate`` it is
    resampled; with ``duration`` it is exactly round(duration * rate) samples, zero-padded when
    the file ends early (with a ``MediaWarning`` naming the file). A missing audio stream, no
    samples, audio that stops before its header says it ends, or digital silence (unless
    ``allow_silent``) raises AvgenError.
    """
    path = _check_file(path)
    if start < 0:
        raise AvgenError(f"audio window of '{path}' starts before 0 s (start={start}); use start >= 0")
    if _is_soundfile(path):
        wave, rate = _read_soundfile(path, start, duration)
        header_end = None
    else:
        wave, rate, header_end = _read_av_audio(path, start, duration)
    if wave.shape[1] == 0:
        where = f" at {start:.3f} s" if start > 0 else ""
        raise AvgenError(f"audio of '{path}' has no samples{where}; the file is empty, truncated or shorter than the window")
    if duration is not None:
        _check_window(path, wave.shape[1] / rate, start, duration, header_end)
    tensor = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    if mono:
        tensor = tensor.mean(dim=0)
    if sample_rate is not None and sample_rate != rate:
        tensor = resample(tensor, rate, sample_rate)
        rate = sample_rate
    if duration is not None:
        tensor = fit_length(tensor, int(round(duration * rate)))
    if not allow_silent and not bool(tensor.abs().amax() > 0):
        raise AvgenError(f"audio of '{path}' is silent (all zeros) in the requested window; check the file or its audio track")
    return tensor, rate


def _check_window(path: Path, got: float, start: float, duration: float, header_end: float | None) -> None:
    """Audio that covers ``got`` of ``duration`` seconds: an error when truncated, a warning when padded."""
    ends = start + got
    if header_end is not None and min(start + duration, header_end) - ends > TRUNCATION_TOLERANCE:
        raise AvgenError(
            f"audio of '{path}' stops at {ends:.3f} s although its header says it lasts {header_end:.3f} s; "
            "the file is truncated or corrupt"
        )
    if duration - got > PAD_WARNING_SECONDS:
        warnings.warn(MediaWarning(
            f"audio of '{path}' ends at {ends:.3f} s, inside the {duration:.3f} s window from {start:.3f} s; "
            f"padded with {duration - got:.3f} s of silence"
        ), stacklevel=3)


def _read_soundfile(path: Path, start: float, duration: float | None) -> tuple[np.ndarray, int]:
    try:
        with sf.SoundFile(str(path)) as f:
            rate = f.samplerate
            first = int(round(start * rate))
            if first >= f.frames:
                return np.zeros((f.channels, 0), np.float32), rate
            f.seek(first)
            count = -1 if duration is None else int(round(duration * rate))
            data = f.read(frames=count, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AvgenError(f"cannot read audio file '{path}': {_reason(exc)}; is it a complete audio file?") from exc
    return data.T, rate


def _read_av_audio(path: Path, start: float, duration: float | None) -> tuple[np.ndarray, int, float | None]:
    """(channels x samples, rate, where the header says the audio ends) of a window, via PyAV."""
    with _open(path) as container:
        if not container.streams.audio:
            raise AvgenError(f"media file '{path}' has no audio stream; give a file with sound or a separate wav")
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        origin = media_origin(container)  # the picture's clock too: a soundtrack that starts late stays late
        header_end = _stream_end(stream, origin)
        if start > 0 and stream.time_base:
            try:
                container.seek(int(max(start + origin - 0.1, 0) / stream.time_base), stream=stream, backward=True)
            except av.FFmpegError:
                container.seek(0)
        end = math.inf if duration is None else start + origin + duration
        chunks: list[np.ndarray] = []
        first_time: float | None = None
        resampler = av.AudioResampler(format="fltp", rate=rate)
        try:
            for frame in container.decode(stream):
                time = frame.time if frame.time is not None else None
                if time is not None and time >= end:
                    break
                for plain in resampler.resample(frame):
                    if first_time is None:
                        first_time = plain.time if plain.time is not None else time
                    chunks.append(plain.to_ndarray())
        except av.FFmpegError as exc:
            if not chunks:
                raise AvgenError(f"cannot decode audio of '{path}': {_reason(exc)}; the file may be corrupt") from exc
    if not chunks:
        return np.zeros((1, 0), np.float32), rate, header_end
    data = np.concatenate(chunks, axis=1)
    skip = int(round((start - (first_time - origin if first_time is not None else 0.0)) * rate))
    # before its first sample a soundtrack that starts after the file's origin is silent
    data = data[:, skip:] if skip >= 0 else np.pad(data, ((0, 0), (-skip, 0)))
    if duration is not None:
        data = data[:, : int(round(duration * rate))]
    return data, rate, header_end


def resample(wave: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Band-limited resampling along the last dimension (torchaudio's sinc interpolation)."""
    if orig_rate == new_rate:
        return wave
    import torchaudio.functional  # imported on first use: it is slow to import

    return torchaudio.functional.resample(wave, int(orig_rate), int(new_rate))


def fit_length(wave: torch.Tensor, length: int) -> torch.Tensor:
    """Trim or zero-pad the last dimension to ``length`` samples."""
    have = wave.shape[-1]
    if have == length:
        return wave
    if have > length:
        return wave[..., :length]
    return torch.nn.functional.pad(wave, (0, length - have))


def write_wav(path: PathLike, wave: torch.Tensor | np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> Path:
    """Write [T] or [C, T] audio (clipped to [-1, 1]) as a wav, atomically."""
    data = wave.detach().cpu().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave)
    data = np.clip(data.astype(np.float32, copy=False), -1.0, 1.0)
    if data.ndim == 2:
        data = data.T
    path = Path(path)
    buffer = io.BytesIO()  # libsndfile reports a full disk as "System error."; a Python write raises ENOSPC
    sf.write(buffer, data, int(sample_rate), subtype=subtype, format="WAV")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return path
