"""Media I/O: video frames with PyAV, audio with soundfile or PyAV, resampling, wav writing, muxing.

Every function opens its own file handle, so they are safe to call from threads and
DataLoader worker processes. Reads of a time window seek first and decode only that
window. Unreadable media raises ``AvgenError`` with one line naming the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import av
import numpy as np
import soundfile as sf
import torch

from avgen._core.errors import AvgenError

PathLike = str | os.PathLike[str]

# Extensions read with soundfile (libsndfile); everything else goes through PyAV.
SOUNDFILE_EXTENSIONS = {".wav", ".flac", ".ogg", ".aif", ".aiff", ".au"}

# Media that ends this much earlier than its header says it lasts is truncated or corrupt.
TRUNCATION_TOLERANCE = 0.1  # seconds
# How frames and sound are read: part of the key of every cache of what is made from them (features, a classifier
# trained on the sounds, a detector's curves). 2: frames turned upright by the display rotation, and every stream
# on its file's own clock (media_origin); files of either kind were read otherwise before.
MEDIA_VERSION = 2
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
    width: int = 0  # as stored: a phone clip with a display rotation of 90 is read turned upright (height x width)
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
            total = max(total, _stream_end(stream, reader.origin) or 0.0)
            duration = max(total - start, 0.0)
        count = max(1, int(round(duration * fps)))
        return reader.read_times([start + k / fps for k in range(count)])


class FrameReader:
    """Frames of one video at ``fps``, read in order with one open container: frame k shows time k / fps.

    ``read(first, count)`` continues decoding where the previous read stopped (consecutive reads seek
    once), with FFmpeg's frame threads (``threaded``), and converts only the frames asked for, scaled to
    ``size`` by the decoder's scaler, never at full resolution into Python, and turned upright where the
    video's display matrix says so (``quarter_turns``: phone clips). ``read_frames`` is one ``read_times`` of a
    fresh reader.
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
        self.origin = media_origin(self.container)  # frame times count from here
        self.header_end = _stream_end(self.stream, self.origin)
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
                self.container.seek(int((start + self.origin) / self.stream.time_base), stream=self.stream,
                                    backward=True, any_frame=False)
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
            time = frame.time - self.origin if frame.time is not None else (self._index - 1) / self.rate
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
            last_time = self._previous.time - self.origin if self._previous is not None and \
                self._previous.time is not None else None
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


def _stream_end(stream, origin: float = 0.0) -> float | None:
    """Where a stream's header says it ends (seconds after ``origin``), or None when it does not say."""
    if not stream.duration or not stream.time_base:
        return None
    return float((stream.start_time or 0) * stream.time_base + stream.duration * stream.time_base) - origin


def media_origin(container: av.container.InputContainer) -> float:
    """Time zero of a media file (seconds on its streams' clocks): the container's start, the earliest start of
    its streams, where that is after 0. Clips cut without re-encoding and camera files often start at 1.4 s or
    later, and one stream may start after the other: every stream is placed on this one clock (a frame of time t
    shows t - origin), so picture and sound stay where they are relative to each other. A start before 0 (an
    encoder's priming samples kept by an edit list) stays before 0: players start such files at 0."""
    start = container.start_time / av.time_base if container.start_time is not None else 0.0
    return max(start, 0.0)


def quarter_turns(frame: av.VideoFrame) -> int:
    """How many quarter turns counterclockwise show ``frame`` upright (0-3): its display matrix's rotation, which
    phones write instead of turning the pictures they store (e.g. a portrait clip kept as landscape frames and
    90). A rotation that is not a multiple of 90 degrees, or none, is 0."""
    angle = float(getattr(frame, "rotation", 0) or 0)  # PyAV >= 13; degrees counterclockwise, in [-180, 180]
    turns = round(angle / 90)
    return turns % 4 if abs(angle - 90 * turns) < 1 else 0


def _rgb(frame: av.VideoFrame, height: int | None, width: int | None) -> np.ndarray:
    """``frame`` as RGB [height, width, 3] as a viewer sees it (turned by its display matrix), scaled by the decoder."""
    turns = quarter_turns(frame)
    if turns % 2:  # scale to the stored frame's side of the size asked for, then turn
        height, width = width, height
    rgb = frame.reformat(width=width, height=height, format="rgb24", interpolation="BILINEAR").to_ndarray()
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


def fit_frames(frames: torch.Tensor, count: int) -> torch.Tensor:
    """Trim or pad (repeating the last frame) the first dimension to exactly ``count`` frames."""
    if frames.shape[0] >= count:
        return frames[:count]
    pad = frames[-1:].expand(count - frames.shape[0], *frames.shape[1:])
    return torch.cat([frames, pad])


CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}  # mux_audio's output, by suffix


