"""Media I/O: video frames with PyAV, audio with soundfile or PyAV, resampling, wav writing, muxing.

Every function opens its own file handle, so they are safe to call from threads and
DataLoader worker processes. Reads of a time window seek first and decode only that
window. Unreadable media raises ``AvgenError`` with one line naming the file.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np
import soundfile as sf
import torch

from avgen._core.atomic import atomic_path
from avgen._core.errors import AvgenError

PathLike = str | os.PathLike[str]

# Extensions read with soundfile (libsndfile); everything else goes through PyAV.
SOUNDFILE_EXTENSIONS = {".wav", ".flac", ".ogg", ".aif", ".aiff", ".au"}

# Media that ends this much earlier than its header says it lasts is truncated or corrupt.
TRUNCATION_TOLERANCE = 0.1  # seconds
# Audio windows missing less than this at their end are padded without a warning.
PAD_WARNING_SECONDS = 0.005


class MediaWarning(UserWarning):
    """Media was used after a repair (e.g. an audio window padded with silence); names the file."""


@dataclass(frozen=True)
class MediaInfo:
    """What a media file holds; fields a file lacks are 0."""

    path: Path
    duration: float  # seconds (longest stream)
    has_video: bool
    has_audio: bool
    fps: float = 0.0
    width: int = 0
    height: int = 0
    num_frames: int = 0  # container's count, or duration * fps when the container has none
    sample_rate: int = 0
    channels: int = 0


def _check_file(path: PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise AvgenError(f"media file '{path}' does not exist; check the dataset root or the path")
    if path.stat().st_size == 0:
        raise AvgenError(f"media file '{path}' is empty (0 bytes); re-copy or re-download it")
    return path


def _open(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), mode="r")
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise AvgenError(f"cannot read media file '{path}': {_reason(exc)}; is it a complete video/audio file?") from exc


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())


def _is_soundfile(path: Path) -> bool:
    return path.suffix.lower() in SOUNDFILE_EXTENSIONS


def probe(path: PathLike) -> MediaInfo:
    """Duration, frame rate, size and audio format of a media file, without decoding it."""
    path = _check_file(path)
    if _is_soundfile(path):
        try:
            info = sf.info(str(path))
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise AvgenError(f"cannot read audio file '{path}': {_reason(exc)}; is it a complete audio file?") from exc
        return MediaInfo(path, info.frames / info.samplerate, False, info.frames > 0,
                         sample_rate=info.samplerate, channels=info.channels)
    with _open(path) as container:
        video = container.streams.video[0] if container.streams.video else None
        audio = container.streams.audio[0] if container.streams.audio else None
        duration = container.duration / av.time_base if container.duration else 0.0
        fps = float(video.average_rate or video.guessed_rate or 0) if video is not None else 0.0
        if video is not None and video.duration and video.time_base:
            duration = max(duration, float(video.duration * video.time_base))
        num_frames = 0
        if video is not None:
            num_frames = video.frames or int(round(duration * fps))
        return MediaInfo(
            path, duration, video is not None, audio is not None, fps,
            video.codec_context.width if video is not None else 0,
            video.codec_context.height if video is not None else 0,
            num_frames,
            audio.codec_context.sample_rate if audio is not None else 0,
            audio.codec_context.channels if audio is not None else 0,
        )


def _sizes(size: int | tuple[int, int] | None) -> tuple[int | None, int | None]:
    """(height, width) from an int (square), a (height, width) pair, or None (native)."""
    if size is None:
        return None, None
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])


def read_frames(
    path: PathLike,
    fps: float,
    size: int | tuple[int, int] | None = None,
    start: float = 0.0,
    duration: float | None = None,
) -> torch.Tensor:
    """RGB frames sampled at ``fps`` from ``start`` for ``duration`` seconds: uint8 [N, H, W, 3].

    Frame k shows time ``start + k / fps`` (the frame on screen then); N = round(duration * fps)
    (at least 1). A video that ends early repeats its last frame. ``size`` is an int (square),
    (height, width), or None for the native size. Only the window is decoded.
    """
    with FrameReader(path, fps, size, threaded=False) as reader:
        if duration is None:
            container, stream = reader.container, reader.stream
            total = container.duration / av.time_base if container.duration else 0.0
            if stream.duration and stream.time_base:
                total = max(total, float(stream.duration * stream.time_base))
            duration = max(total - start, 0.0)
        count = max(1, int(round(duration * fps)))
        return reader.read_times([start + k / fps for k in range(count)])


class FrameReader:
    """Frames of one video at ``fps``, read in order with one open container: frame k shows time k / fps.

    ``read(first, count)`` continues decoding where the previous read stopped (consecutive reads seek
    once), with FFmpeg's frame threads (``threaded``), and converts only the frames asked for, scaled to
    ``size`` by the decoder's scaler, never at full resolution into Python. ``read_frames`` is one
    ``read_times`` of a fresh reader.
    """

    SEEK_AHEAD_SECONDS = 10.0  # a read further ahead than this seeks instead of decoding its way there

    def __init__(self, path: PathLike, fps: float, size: int | tuple[int, int] | None = None,
                 threads: int | None = None, threaded: bool = True) -> None:
        if fps <= 0:
            raise AvgenError(f"frame rate must be positive, got fps={fps}")
        self.path = _check_file(path)
        self.fps = float(fps)
        self.height, self.width = _sizes(size)
        self.container = _open(self.path)
        if not self.container.streams.video:
            self.container.close()
            raise AvgenError(f"media file '{self.path}' has no video stream; give a video (e.g. mp4) with picture")
        self.stream = self.container.streams.video[0]
        if threaded:
            self.stream.thread_type = "AUTO"  # frame and slice threads
        if threads:
            self.stream.codec_context.thread_count = int(threads)
        self.rate = float(self.stream.average_rate or self.stream.guessed_rate or 30)
        self.header_end = _stream_end(self.stream)
        self._frames: Iterator[av.VideoFrame] | None = None
        self._pending: av.VideoFrame | None = None  # decoded, not yet compared with a target
        self._previous: av.VideoFrame | None = None  # the last frame at or before the last target
        self._previous_rgb: np.ndarray | None = None
        self._index = 0  # decoded frames since the last seek (their time when the container has none)
        self._next: int | None = None  # the frame index a read continuing the decode starts at (None: seek)

    def __enter__(self) -> "FrameReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.container.close()

    def _seek(self, start: float) -> None:
        """Decode anew from the keyframe at or before ``start`` seconds (a fresh reader at 0 needs no seek)."""
        if start > 0 and self.stream.time_base:
            try:
                self.container.seek(int(start / self.stream.time_base), stream=self.stream, backward=True,
                                    any_frame=False)
            except av.FFmpegError:
                self.container.seek(0)
        elif self._frames is not None:
            self.container.seek(0)
        self._frames = iter(self.container.decode(self.stream))
        self._pending = self._previous = self._previous_rgb = None
        self._index = 0

    def _decoded(self) -> av.VideoFrame | None:
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        try:
            frame = next(self._frames)
        except StopIteration:
            return None
        except av.FFmpegError as exc:
            if self._previous is None:
                raise AvgenError(f"cannot decode video '{self.path}': {_reason(exc)}; the file may be corrupt") from exc
            return None
        self._index += 1
        return frame

    def read(self, first: int, count: int) -> torch.Tensor:
        """Frames first .. first + count - 1: uint8 [count, H, W, 3]."""
        if self._next is None or first < self._next or (first - self._next) / self.fps > self.SEEK_AHEAD_SECONDS:
            self._seek(first / self.fps)
        frames = self._shown_at([(first + k) / self.fps for k in range(count)])
        self._next = first + count
        return frames

    def read_times(self, targets: list[float]) -> torch.Tensor:
        """The frame on screen at each of the increasing ``targets`` (seconds), decoded from a seek to the first."""
        self._seek(targets[0])
        self._next = None  # the next read() seeks
        return self._shown_at(targets)

    def _shown_at(self, targets: list[float]) -> torch.Tensor:
        """Continue decoding: the last frame starting at or before each target, reformatted to RGB."""
        count = len(targets)
        out: list[np.ndarray] = []
        eps = 1e-6
        while len(out) < count:
            frame = self._decoded()
            if frame is None:
                break
            time = frame.time if frame.time is not None else (self._index - 1) / self.rate
            if self._previous is not None and time > targets[len(out)] + eps:
                if self._previous_rgb is None:
                    self._previous_rgb = _rgb(self._previous, self.height, self.width)
                out.append(self._previous_rgb)
                self._pending = frame  # it may still be the frame shown at the next target
                continue
            self._previous, self._previous_rgb = frame, None
        if self._previous is None and not out:
            raise AvgenError(f"video '{self.path}' has no decodable frames at {targets[0]:.3f} s; the file may be "
                             "corrupt or shorter than that")
        if len(out) < count:  # the video ended: hold its last frame
            last_time = self._previous.time if self._previous is not None else None
            if last_time is not None and self.header_end is not None and \
                    min(targets[-1], self.header_end) - last_time > max(TRUNCATION_TOLERANCE, 2 / self.rate):
                raise AvgenError(
                    f"video '{self.path}' has no frames after {last_time:.3f} s although its header says it lasts "
                    f"{self.header_end:.3f} s; the file is truncated or corrupt"
                )
            if self._previous_rgb is None and self._previous is not None:
                self._previous_rgb = _rgb(self._previous, self.height, self.width)
            last = self._previous_rgb if self._previous_rgb is not None else out[-1]
            out.extend([last] * (count - len(out)))
        return torch.from_numpy(np.stack(out))


def _stream_end(stream) -> float | None:
    """Where a stream's header says it ends (seconds), or None when it does not say."""
    if not stream.duration or not stream.time_base:
        return None
    return float((stream.start_time or 0) * stream.time_base + stream.duration * stream.time_base)


def _rgb(frame: av.VideoFrame, height: int | None, width: int | None) -> np.ndarray:
    return frame.reformat(width=width, height=height, format="rgb24", interpolation="BILINEAR").to_ndarray()


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
        header_end = _stream_end(stream)
        if start > 0 and stream.time_base:
            try:
                container.seek(int(max(start - 0.1, 0) / stream.time_base), stream=stream, backward=True)
            except av.FFmpegError:
                container.seek(0)
        end = math.inf if duration is None else start + duration
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
                        first_time = plain.time if plain.time is not None else (time or 0.0)
                    chunks.append(plain.to_ndarray())
        except av.FFmpegError as exc:
            if not chunks:
                raise AvgenError(f"cannot decode audio of '{path}': {_reason(exc)}; the file may be corrupt") from exc
    if not chunks:
        return np.zeros((1, 0), np.float32), rate, header_end
    data = np.concatenate(chunks, axis=1)
    skip = max(0, int(round((start - (first_time or 0.0)) * rate)))
    data = data[:, skip:]
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


def fit_frames(frames: torch.Tensor, count: int) -> torch.Tensor:
    """Trim or pad (repeating the last frame) the first dimension to exactly ``count`` frames."""
    if frames.shape[0] >= count:
        return frames[:count]
    pad = frames[-1:].expand(count - frames.shape[0], *frames.shape[1:])
    return torch.cat([frames, pad])


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


def write_video(
    path: PathLike,
    frames: Iterator[np.ndarray] | np.ndarray | torch.Tensor,
    fps: int,
    codec: str = "libx264",
    crf: int = 23,
    keyframe_every: int = 15,
    threads: int = 1,
) -> Path:
    """Encode RGB uint8 frames [H, W, 3] (H, W even) as a video-only mp4, atomically.

    A short keyframe interval keeps seeks to a clip window cheap.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = None
            for frame in frames:
                array = frame.numpy() if isinstance(frame, torch.Tensor) else np.asarray(frame)
                if stream is None:
                    stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
                    stream.height, stream.width = array.shape[0], array.shape[1]
                    stream.pix_fmt = "yuv420p"
                    stream.gop_size = keyframe_every
                    stream.codec_context.thread_count = threads
                    if codec == "libx264":
                        stream.options = {"crf": str(crf), "preset": "ultrafast", "tune": "zerolatency"}
                video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array, dtype=np.uint8), format="rgb24")
                for packet in stream.encode(video_frame):
                    container.mux(packet)
            if stream is None:
                raise AvgenError(f"no frames to write to '{path}'")
            for packet in stream.encode():
                container.mux(packet)
    return path


CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}  # mux_audio's output, by suffix


def mux_audio(
    video: PathLike,
    audio: PathLike | torch.Tensor,
    out: PathLike,
    sample_rate: int | None = None,
    keep_original_audio: bool = False,
    bitrate: int = 128_000,
) -> Path:
    """Copy ``video``'s picture (no re-encoding) into ``out`` (mp4; mov or Matroska by its suffix) with ``audio`` as AAC.

    ``audio`` is a file or a [T]/[C, T] tensor at ``sample_rate``; it is cut to the video's
    length. With ``keep_original_audio`` the source's first audio track is kept as a second track;
    the generated track comes first and is the default one, so players play it.
    """
    video = _check_file(video)
    info = probe(video)
    if not info.has_video:
        raise AvgenError(f"media file '{video}' has no video stream; mux_audio needs a video")
    streamed = not isinstance(audio, torch.Tensor) and _is_soundfile(_check_file(audio))
    if streamed:  # a wav/flac file is read a block at a time: memory does not grow with its length
        header = sf.info(str(audio))
        rate = header.samplerate
        streamed = sample_rate is None or int(sample_rate) == rate
    if streamed:
        channels = header.channels if header.channels <= 2 else 1
        limit = int(round(info.duration * rate)) if info.duration > 0 else None
        blocks = _wav_blocks(Path(audio), limit)
    else:
        if isinstance(audio, torch.Tensor):
            if sample_rate is None:
                raise AvgenError("mux_audio needs sample_rate when audio is a tensor")
            wave, rate = audio.detach().float().cpu(), int(sample_rate)
        else:
            wave, rate = read_audio(audio, sample_rate=sample_rate, mono=False, allow_silent=True)
        wave = wave.reshape(-1, wave.shape[-1]) if wave.dim() > 1 else wave[None]
        if wave.shape[0] > 2:
            wave = wave.mean(dim=0, keepdim=True)
        if info.duration > 0:
            wave = wave[:, : int(round(info.duration * rate))]
        channels, blocks = wave.shape[0], iter([wave.numpy()])
    out = Path(out)
    with atomic_path(out) as tmp, _open(video) as source:
        with av.open(str(tmp), mode="w", format=CONTAINERS.get(out.suffix.lower(), "mp4")) as target:
            video_in = source.streams.video[0]
            video_out = target.add_stream_from_template(video_in)
            audio_out = target.add_stream("aac", rate=rate)
            audio_out.layout = "mono" if channels == 1 else "stereo"
            audio_out.bit_rate = bitrate
            audio_out.disposition = av.stream.Disposition.default
            keep_in = source.streams.audio[0] if keep_original_audio and source.streams.audio else None
            keep_out = target.add_stream_from_template(keep_in) if keep_in is not None else None
            if keep_out is not None:
                keep_out.disposition = av.stream.Disposition(0)
            _encode_audio(target, audio_out, blocks, rate)
            copy_streams = [s for s in (video_in, keep_in) if s is not None]
            for packet in source.demux(copy_streams):
                if packet.dts is None:
                    continue
                packet.stream = video_out if packet.stream is video_in else keep_out
                target.mux(packet)
    return out


def _wav_blocks(path: Path, limit: int | None, size: int = 1 << 18) -> Iterator[np.ndarray]:
    """[C, n] float32 blocks of a soundfile-readable file (more than 2 channels averaged), at most ``limit`` samples."""
    done = 0
    with sf.SoundFile(str(path)) as source:
        for block in source.blocks(blocksize=size, dtype="float32", always_2d=True):
            if limit is not None:
                block = block[: max(0, limit - done)]
            done += block.shape[0]
            block = block.T if block.shape[1] <= 2 else block.mean(axis=1, keepdims=True).T
            if block.shape[1]:
                yield block
            if limit is not None and done >= limit:
                break


def _encode_audio(container, stream, blocks: Iterator[np.ndarray], rate: int, chunk: int = 1024) -> None:
    """Encode [C, n] float blocks (clipped to [-1, 1]) as consecutive audio frames."""
    offset = 0
    for wave in blocks:
        layout = "mono" if wave.shape[0] == 1 else "stereo"
        data = np.ascontiguousarray(np.clip(wave, -1.0, 1.0), dtype=np.float32)
        for at in range(0, data.shape[1], chunk * 16):
            piece = np.ascontiguousarray(data[:, at : at + chunk * 16])
            frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout=layout)
            frame.sample_rate = rate
            frame.pts = offset
            frame.time_base = Fraction(1, rate)
            offset += piece.shape[1]
            for packet in stream.encode(frame):
                container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
