"""avgen._core.media: windowed frame decoding, audio reading/resampling, wav writing, muxing, bad media."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch

import avgen
from avgen._core import media
from avgen._core.errors import AvgenError

FPS = 30
STEP = 4  # grey level per frame: frame i is filled with (i * STEP) % 256


def write_grey_video(path: Path, frames: int, fps: int = FPS, size: int = 32, wave: np.ndarray | None = None, rate: int = 16000) -> Path:
    """An mp4 (PyAV, lossless x264) whose frame i is uniformly grey (i * STEP) % 256; optional AAC track."""
    with av.open(str(path), "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width = video.height = size
        video.pix_fmt = "yuv444p"
        video.options = {"qp": "0", "preset": "ultrafast"}
        audio = None
        if wave is not None:
            audio = out.add_stream("aac", rate=rate)
            audio.layout = "mono"
        for i in range(frames):
            grey = np.full((size, size, 3), (i * STEP) % 256, np.uint8)
            for packet in video.encode(av.VideoFrame.from_ndarray(grey, format="rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        if audio is not None:
            frame = av.AudioFrame.from_ndarray(wave.astype(np.float32)[None], format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
            for packet in [*audio.encode(frame), *audio.encode(None)]:
                out.mux(packet)
    return path


def frame_indices(frames: torch.Tensor) -> list[int]:
    return [int(round(v / STEP)) for v in frames[:, 0, 0, 0].tolist()]


def test_read_frames_window_picks_the_frame_on_screen(tmp_path):
    path = write_grey_video(tmp_path / "v.mp4", frames=60)
    frames = media.read_frames(path, fps=10, size=16, start=1.0, duration=0.5)
    assert frames.shape == (5, 16, 16, 3) and frames.dtype == torch.uint8
    # times 1.0, 1.1, ... 1.4 s at 30 fps -> frames 30, 33, 36, 39, 42
    assert frame_indices(frames) == [30, 33, 36, 39, 42]
    # a frame rate above the video's repeats frames; (height, width) sizes are honoured
    frames = media.read_frames(path, fps=60, size=(8, 12), start=0.5, duration=0.1)
    assert frames.shape == (6, 8, 12, 3)
    assert frame_indices(frames) == [15, 15, 16, 16, 17, 17]


def test_read_frames_past_the_end_repeats_the_last_frame(tmp_path):
    path = write_grey_video(tmp_path / "v.mp4", frames=30)
    frames = media.read_frames(path, fps=30, size=None, start=0.9, duration=0.3)
    assert frames.shape == (9, 32, 32, 3)
    assert frame_indices(frames) == [27, 28, 29, 29, 29, 29, 29, 29, 29]
    whole = media.read_frames(path, fps=15)
    assert frame_indices(whole) == list(range(0, 30, 2))


@pytest.mark.parametrize("fps", [10, 30, 45])
def test_frame_reader_reads_in_pieces_what_read_frames_reads(tmp_path, fps):
    """Consecutive reads continue the decode; going back or far ahead seeks; past the end holds the last frame.
    Each read equals read_frames over the same window (the frame on screen at (first + k) / fps)."""
    path = write_grey_video(tmp_path / "v.mp4", frames=300)  # 10 s at 30 fps, grey level tells the frame
    pieces = [(0, 7), (7, 1), (8, 30), (38, 40), (20, 5), (250, 10), (fps * 10 - 3, 8), (3, 4)]
    with media.FrameReader(path, fps, 16) as reader:
        for first, count in pieces:
            got = reader.read(first, count)
            expected = media.read_frames(path, fps, 16, start=first / fps, duration=count / fps)
            assert got.shape == (count, 16, 16, 3)
            assert frame_indices(got) == frame_indices(expected), (first, count)
            shown = [min(299, int((first + k) / fps * 30 + 1e-6)) % (256 // STEP) for k in range(count)]
            assert frame_indices(got) == shown, (first, count)


def test_probe_reports_streams(tmp_path):
    info = media.probe(write_grey_video(tmp_path / "v.mp4", frames=45))
    assert info.has_video and not info.has_audio
    assert info.fps == pytest.approx(30) and (info.width, info.height) == (32, 32)
    assert info.duration == pytest.approx(1.5, abs=0.04)
    wav = tmp_path / "a.wav"
    sf.write(wav, np.full(8000, 0.1, np.float32), 16000)
    info = media.probe(wav)
    assert info.has_audio and not info.has_video and info.duration == pytest.approx(0.5) and info.sample_rate == 16000


def test_read_audio_window_matches_the_file_and_pads(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.uniform(-0.5, 0.5, (2, 44100)).astype(np.float32)
    path = tmp_path / "a.wav"
    sf.write(path, data.T, 44100, subtype="FLOAT")
    wave, rate = avgen.read_audio(path, start=0.25, duration=0.5)
    assert rate == 44100 and wave.dtype == torch.float32
    np.testing.assert_allclose(wave.numpy(), data[:, 11025:33075].mean(axis=0), atol=1e-6)
    stereo, _ = avgen.read_audio(path, mono=False, start=0.9, duration=0.2)
    assert stereo.shape == (2, 8820)
    np.testing.assert_allclose(stereo[:, :4410].numpy(), data[:, 39690:], atol=1e-6)
    assert torch.count_nonzero(stereo[:, 4410:]) == 0  # padded past the end


def test_resampling_keeps_a_tone_at_its_frequency(tmp_path):
    t = np.arange(48000) / 48000
    path = tmp_path / "tone.wav"
    sf.write(path, 0.5 * np.sin(2 * np.pi * 1000 * t), 48000, subtype="FLOAT")
    wave, rate = avgen.read_audio(path, sample_rate=8000, duration=1.0)
    assert rate == 8000 and wave.shape == (8000,)
    spectrum = np.abs(np.fft.rfft(wave.numpy()))
    assert np.argmax(spectrum) == 1000  # 1 Hz bins
    assert wave[1000:7000].abs().max().item() == pytest.approx(0.5, abs=0.02)


def test_write_wav_round_trip(tmp_path):
    wave = torch.linspace(-0.9, 0.9, 2205)
    path = avgen.write_wav(tmp_path / "out" / "w.wav", wave, 22050)
    data, rate = sf.read(path, dtype="float32")
    assert rate == 22050
    np.testing.assert_allclose(data, wave.numpy(), atol=1 / 32767 + 1e-6)


def test_mux_copies_video_and_adds_audio(tmp_path):
    video = write_grey_video(tmp_path / "v.mp4", frames=60)  # 2 s
    wav = tmp_path / "s.wav"
    sf.write(wav, 0.3 * np.sin(2 * np.pi * 440 * np.arange(44100) / 22050), 22050)  # exactly 2 s
    out = avgen.mux_audio(video, wav, tmp_path / "muxed.mp4")
    with av.open(str(out)) as c:
        assert len(c.streams.video) == 1 and len(c.streams.audio) == 1
        audio = c.streams.audio[0]
        assert audio.codec_context.name == "aac" and audio.codec_context.sample_rate == 22050
        samples = sum(f.samples for f in c.decode(audio))
    assert samples / 22050 == pytest.approx(2.0, abs=0.05)
    wave, rate = avgen.read_audio(out, start=0.5, duration=1.0)
    assert wave.shape == (22050,) and wave.abs().max() == pytest.approx(0.3, abs=0.05)

    def packets(path):
        with av.open(str(path)) as c:
            return [bytes(p) for p in c.demux(c.streams.video[0]) if p.size]

    assert packets(out) == packets(video)  # the picture was copied, not re-encoded
    both = avgen.mux_audio(out, wav, tmp_path / "both.mp4", keep_original_audio=True)
    with av.open(str(both)) as c:
        assert len(c.streams.audio) == 2


def write_turned_video(path: Path, rotation: int, frames: int = 6, width: int = 64, height: int = 32) -> Path:
    """An mp4 of ``frames`` stored ``width`` x ``height`` frames, black with a white 16 x 16 square in the stored
    top-left corner, whose display matrix says: turn ``rotation`` degrees counterclockwise to show it (as a phone
    writes a portrait clip)."""
    with av.open(str(path), "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = width, height, "yuv444p"
        video.options = {"qp": "0", "preset": "ultrafast"}
        if rotation:
            video.set_display_rotation(rotation)
        picture = np.zeros((height, width, 3), np.uint8)
        picture[:16, :16] = 255
        for _ in range(frames):
            for packet in video.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
    return path


def white_corner(frame: torch.Tensor) -> str:
    """Which corner of an [H, W, 3] frame holds the white square: 'top-left', 'bottom-right', ..."""
    h, w = frame.shape[:2]
    grey = frame.float().mean(-1)
    corners = {"top-left": grey[:h // 4, :w // 4], "top-right": grey[:h // 4, -(w // 4):],
               "bottom-left": grey[-(h // 4):, :w // 4], "bottom-right": grey[-(h // 4):, -(w // 4):]}
    bright = [name for name, part in corners.items() if part.mean() > 200]
    assert len(bright) == 1, {name: float(part.mean()) for name, part in corners.items()}
    return bright[0]


# FFmpeg's display matrix rotation is the angle that turns the stored frame counterclockwise for display: a stored
# top-left corner ends bottom-left after +90, top-right after -90, bottom-right after 180.
@pytest.mark.parametrize("rotation, corner", [(0, "top-left"), (90, "bottom-left"), (-90, "top-right"),
                                              (180, "bottom-right")])
def test_frames_of_a_turned_phone_clip_are_read_upright(tmp_path, rotation, corner):
    video = write_turned_video(tmp_path / "phone.mp4", rotation)
    upright = (64, 32) if rotation in (90, -90) else (32, 64)  # (height, width) as shown
    native = avgen.read_frames(video, FPS)
    assert tuple(native.shape[1:3]) == upright
    assert white_corner(native[0]) == corner
    square = avgen.read_frames(video, FPS, 24)  # the encoders' square input: the same corner
    assert tuple(square.shape[1:3]) == (24, 24) and white_corner(square[0]) == corner
    with avgen.FrameReader(video, FPS, (40, 20)) as reader:  # (height, width) asked for is the upright frame's
        sized = reader.read(0, 3)
    assert tuple(sized.shape[1:3]) == (40, 20) and white_corner(sized[2]) == corner


def test_a_turned_clip_keeps_its_display_rotation_through_mux(tmp_path):
    video = write_turned_video(tmp_path / "phone.mp4", 90, frames=30)
    wav = tmp_path / "s.wav"
    sf.write(wav, np.zeros(22050, np.float32), 22050)
    out = avgen.mux_audio(video, wav, tmp_path / "muxed.mp4")
    assert white_corner(avgen.read_frames(out, FPS)[0]) == "bottom-left"  # shown as the input is


def write_offset_video(path: Path, video_start: float, audio_start: float | None = None, frames: int = 60,
                       rate: int = 16000) -> Path:
    """An mp4 whose picture starts ``video_start`` s into the file's clock (as a clip cut without re-encoding
    does), frame i grey 16 + 3 i; with ``audio_start``, an AAC track from then on, 2 s, with a click 0.5 s into it."""
    with av.open(str(path), "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=FPS)
        video.width = video.height = 32
        video.pix_fmt, video.options = "yuv444p", {"qp": "0", "preset": "ultrafast"}
        audio = out.add_stream("aac", rate=rate) if audio_start is not None else None
        if audio is not None:
            audio.layout = "mono"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 16 + 3 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = i + round(video_start * FPS), Fraction(1, FPS)
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        if audio is not None:
            wave = np.zeros(2 * rate, np.float32)
            wave[rate // 2:rate // 2 + 200] = 0.8
            frame = av.AudioFrame.from_ndarray(wave[None], format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, round(audio_start * rate), Fraction(1, rate)
            for packet in [*audio.encode(frame), *audio.encode(None)]:
                out.mux(packet)
    return path


def clock(path: Path) -> tuple[float, float | None]:
    """(time of the first picture, time of the first loud sample) on the file's own stream clocks, decoded with
    PyAV alone: what a player syncs by."""
    with av.open(str(path)) as c:
        first_picture = next(c.decode(video=0)).time
    with av.open(str(path)) as c:
        if not c.streams.audio:
            return first_picture, None
        for frame in c.decode(audio=0):
            loud = np.flatnonzero(np.abs(frame.to_ndarray()).max(axis=0) > 0.3)
            if loud.size:
                return first_picture, frame.time + loud[0] / frame.sample_rate
    raise AssertionError("no click")


def greys(frames: torch.Tensor) -> list[int]:
    return [round((v - 16) / 3) for v in frames[:, 0, 0, 0].tolist()]


def test_a_clip_whose_streams_start_late_is_read_on_its_own_clock(tmp_path):
    late = write_offset_video(tmp_path / "cut.mp4", video_start=1.5)  # picture from 1.5 s on the file's clock
    assert greys(avgen.read_frames(late, FPS)) == list(range(60))  # frame k shows time k / fps after the start
    with avgen.FrameReader(late, FPS) as reader:
        assert greys(reader.read(40, 10)) == list(range(40, 50))  # a seek lands on the same clock
    # a soundtrack that starts 0.2 s after the picture: its click is 0.7 s in, as a player plays it
    both = write_offset_video(tmp_path / "av.mp4", video_start=0.0, audio_start=0.2)
    picture, click = clock(both)
    wave, rate = avgen.read_audio(both)
    heard = float(np.flatnonzero(wave.abs().numpy() > 0.3)[0]) / rate
    assert heard == pytest.approx(click - picture, abs=0.002) and heard == pytest.approx(0.7, abs=0.08)


def test_the_clock_starts_at_the_files_start_and_never_before_0():
    from types import SimpleNamespace

    assert media.media_origin(SimpleNamespace(start_time=1_500_000)) == 1.5  # microseconds (av.time_base)
    assert media.media_origin(SimpleNamespace(start_time=None)) == 0.0
    assert media.media_origin(SimpleNamespace(start_time=-21_333)) == 0.0  # priming before 0: played from 0


def test_mux_puts_the_sound_on_the_clock_of_a_picture_that_starts_late(tmp_path):
    late = write_offset_video(tmp_path / "cut.mp4", video_start=1.5)
    wav = tmp_path / "click.wav"
    wave = np.zeros(2 * 22050, np.float32)
    wave[11025:11325] = 0.8  # 0.5 s into the video
    sf.write(wav, wave, 22050)
    out = avgen.mux_audio(late, wav, tmp_path / "muxed.mp4")
    picture, click = clock(out)
    assert click - picture == pytest.approx(0.5, abs=0.005)


@pytest.fixture
def bad_media(tmp_path):
    good = write_grey_video(tmp_path / "good.mp4", frames=30)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    audio_only = tmp_path / "audio_only.wav"
    sf.write(audio_only, np.full(1600, 0.2, np.float32), 16000)
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(1600, np.float32), 16000)
    empty_wav = tmp_path / "no_samples.wav"
    sf.write(empty_wav, np.zeros(0, np.float32), 16000)
    return {"good": good, "truncated": truncated, "empty": empty, "junk": junk,
            "audio_only": audio_only, "silent": silent, "empty_wav": empty_wav}


@pytest.mark.parametrize(
    "name, read",
    [
        ("truncated", "frames"),
        ("empty", "frames"),
        ("empty", "audio"),
        ("junk", "frames"),
        ("junk", "audio"),
        ("good", "audio"),  # an mp4 without an audio stream
        ("audio_only", "frames"),  # a file without a video stream
        ("silent", "audio"),
        ("empty_wav", "audio"),
    ],
)
def test_bad_media_gives_one_line_naming_the_file(bad_media, name, read):
    path = bad_media[name]
    with pytest.raises(AvgenError) as info:
        if read == "frames":
            media.read_frames(path, fps=10, size=16)
        else:
            avgen.read_audio(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_missing_file_names_it(tmp_path):
    with pytest.raises(AvgenError, match="does not exist"):
        media.probe(tmp_path / "nope.mp4")


def test_mux_keeping_the_original_audio_puts_the_generated_track_first_and_default(tmp_path):
    """A player plays the first default audio track: that must be the generated sound, not the original."""
    original = 0.1 * np.sin(2 * np.pi * 220 * np.arange(32000) / 16000)
    video = write_grey_video(tmp_path / "v.mp4", frames=60, wave=original, rate=16000)  # 2 s, 16 kHz AAC
    wav = tmp_path / "s.wav"
    sf.write(wav, 0.5 * np.sin(2 * np.pi * 440 * np.arange(44100) / 22050), 22050)
    out = avgen.mux_audio(video, wav, tmp_path / "both.mp4", keep_original_audio=True)
    with av.open(str(out)) as c:
        kinds = [(s.type, s.codec_context.sample_rate if s.type == "audio" else None) for s in c.streams]
        default = [bool(s.disposition & av.stream.Disposition.default) for s in c.streams.audio]
    assert kinds == [("video", None), ("audio", 22050), ("audio", 16000)]  # generated, then the original
    assert default == [True, False]
    for suffix in (".mp4", ".mkv"):  # a player's track menu names them
        named = avgen.mux_audio(video, wav, tmp_path / f"named{suffix}", keep_original_audio=True)
        with av.open(str(named)) as c:
            names = [s.metadata.get("title") or s.metadata.get("handler_name") or s.metadata.get("name")
                     for s in c.streams.audio]
        assert names == ["generated sound (avgen)", "original sound"], (suffix, names)
    wave, _ = avgen.read_audio(out, start=0.5, duration=1.0)  # what a reader takes: the first audio track
    assert wave.abs().max() == pytest.approx(0.5, abs=0.05)
