"""Writing video: a silent mp4 from frames, and a sound muxed into a copy of a video (streamed, in blocks)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np
import soundfile as sf
import torch

from avgen._core.atomic import atomic_path
from avgen._core.errors import AvgenError
from avgen._core.media import CONTAINERS, PathLike, _check_file, _is_soundfile, _open, media_origin, probe
from avgen._core.sound import read_audio


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
            if keep_out is not None:  # two tracks: named, so that a player's track menu tells them apart
                keep_out.disposition = av.stream.Disposition(0)
                for stream, name in ((audio_out, "generated sound (avgen)"), (keep_out, "original sound")):
                    stream.metadata.update({"title": name, "handler_name": name})
            # the sound starts where the copied picture's clock starts (a clip cut from a longer file may start at 1.4 s)
            _encode_audio(target, audio_out, blocks, rate, first=round(media_origin(source) * rate))
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


def _encode_audio(container, stream, blocks: Iterator[np.ndarray], rate: int, chunk: int = 1024, first: int = 0) -> None:
    """Encode [C, n] float blocks (clipped to [-1, 1]) as consecutive audio frames, the first at sample ``first``."""
    offset = first
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
