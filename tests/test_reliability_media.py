"""Bad and unusual media, as real files: each is read correctly or rejected in one line naming the file;
a dataset with a few bad files is featurized without them (or stops under --strict).

tests/test_media.py covers the plain cases (windows, resampling a tone, moov-less truncation of the
picture, empty/junk/silent files); this file adds what a real dataset throws at a run.
"""

from __future__ import annotations

import json
import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.signal import resample_poly

import avgen
from avgen._core import media
from avgen._core.errors import AvgenError
from conftest import error_lines, run_avgen

STEP = 16  # grey level per frame: frame i is filled with (i * STEP) % 256


def tone(seconds: float, rate: int, channels: int = 1, freqs: tuple[float, ...] = (440.0, 1250.0)) -> np.ndarray:
    """[channels, samples] float32: channel c is a sine at freqs[c]."""
    t = np.arange(int(round(seconds * rate))) / rate
    return np.stack([0.3 * np.sin(2 * np.pi * freqs[c % len(freqs)] * t) for c in range(channels)]).astype(np.float32)


def write_mp4(path: Path, seconds: float = 1.0, fps: int = 30, size: int = 32, rate: int = 16000, channels: int = 1,
              video: bool = True, audio: bool = True, faststart: bool = False) -> Path:
    """An mp4 written with PyAV: frame i uniformly grey (i * STEP) % 256 (lossless x264) and/or an AAC
    tone, packets interleaved by time; ``faststart`` puts the index (moov) before the data."""
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", format="mp4", options=options) as out:
        packets = []
        if video:
            stream = out.add_stream("libx264", rate=fps)
            stream.width = stream.height = size
            stream.pix_fmt = "yuv444p"
            stream.options = {"qp": "0", "preset": "ultrafast"}
            for i in range(int(round(seconds * fps))):
                grey = np.full((size, size, 3), (i * STEP) % 256, np.uint8)
                packets += stream.encode(av.VideoFrame.from_ndarray(grey, format="rgb24"))
            packets += stream.encode()
        if audio:
            sound = out.add_stream("aac", rate=rate)
            sound.layout = "mono" if channels == 1 else "stereo"
            frame = av.AudioFrame.from_ndarray(tone(seconds, rate, channels), format="fltp", layout=sound.layout.name)
            frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
            packets += [*sound.encode(frame), *sound.encode(None)]
        for packet in sorted(packets, key=lambda p: float(p.pts * p.time_base)):
            out.mux(packet)
    return path


def grey_indices(frames: torch.Tensor) -> list[int]:
    return [int(round(v / STEP)) for v in frames[:, 0, 0, 0].tolist()]


def rejected(call, path: Path) -> str:
    """The AvgenError message of call(): one line that names the file."""
    with pytest.raises(AvgenError) as info:
        call()
    message = str(info.value)
    assert str(path) in message and "\n" not in message, message
    return message


# ---------------------------------------------------------------- truncated, empty, foreign files


def test_truncated_mp4_with_its_index_first_reads_up_to_the_cut_and_rejects_after(tmp_path: Path) -> None:
    """moov before the data (faststart), the data cut at 40 %: the header still says 2 s."""
    whole = write_mp4(tmp_path / "whole.mp4", seconds=2.0, faststart=True)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.4)])
    assert media.probe(cut).duration == pytest.approx(2.0, abs=0.05)  # the header does not know

    before = media.read_frames(cut, fps=10, size=16, start=0.0, duration=0.3)
    assert torch.equal(before, media.read_frames(whole, fps=10, size=16, start=0.0, duration=0.3))
    early, _ = avgen.read_audio(cut, start=0.1, duration=0.2)
    reference, _ = avgen.read_audio(whole, start=0.1, duration=0.2)
    np.testing.assert_allclose(early.numpy(), reference.numpy(), atol=1e-6)

    assert "truncated or corrupt" in rejected(lambda: media.read_frames(cut, fps=10, size=16, start=1.5, duration=0.5), cut)
    assert "truncated or corrupt" in rejected(lambda: media.read_frames(cut, fps=10, size=16), cut)
    rejected(lambda: avgen.read_audio(cut, start=1.5, duration=0.5), cut)
    # a window that starts before the cut and ends after it is refused too, not padded
    last_audio = avgen.read_audio(cut)[0].shape[0] / 16000
    assert "truncated or corrupt" in rejected(lambda: avgen.read_audio(cut, start=max(last_audio - 0.1, 0), duration=0.5), cut)


@pytest.mark.parametrize("cut", [0.0, 0.05, 0.5, 0.95])
def test_truncated_mp4_without_its_index_is_one_line_for_every_reader(tmp_path: Path, cut: float) -> None:
    whole = write_mp4(tmp_path / "whole.mp4", seconds=1.0)
    path = tmp_path / f"cut{cut}.mp4"
    path.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * cut)])
    for call in (lambda: media.probe(path), lambda: media.read_frames(path, fps=10, size=16),
                 lambda: avgen.read_audio(path, duration=0.5)):
        rejected(call, path)


def test_foreign_bytes_behind_media_names_are_one_line(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    junk_wav = tmp_path / "junk.wav"
    junk_wav.write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    fake_mp4 = tmp_path / "fake.mp4"  # a valid-looking mp4 signature, then noise
    fake_mp4.write_bytes(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    for path in (junk_wav, fake_mp4, text):
        rejected(lambda: media.probe(path), path)
        rejected(lambda: avgen.read_audio(path, duration=0.5), path)
    for path in (fake_mp4, text):
        rejected(lambda: media.read_frames(path, fps=10, size=16), path)


def test_zero_length_files_of_every_kind_are_one_line(tmp_path: Path) -> None:
    for name in ("empty.wav", "empty.flac", "empty.m4a", "empty.mkv"):
        path = tmp_path / name
        path.write_bytes(b"")
        assert "empty (0 bytes)" in rejected(lambda: media.probe(path), path)
        rejected(lambda: avgen.read_audio(path), path)


def test_audio_only_mp4_gives_its_sound_and_refuses_frames(tmp_path: Path) -> None:
    path = write_mp4(tmp_path / "sound.m4a", seconds=1.0, video=False)
    info = media.probe(path)
    assert info.has_audio and not info.has_video and info.sample_rate == 16000
    assert "no video stream" in rejected(lambda: media.read_frames(path, fps=10, size=16), path)
    wave, rate = avgen.read_audio(path, start=0.25, duration=0.5)
    expected = tone(1.0, 16000)[0, 4000:12000]
    assert rate == 16000 and wave.shape == (8000,)
    # AAC is lossy: the tone comes back close, at its frequency
    assert np.corrcoef(wave.numpy(), expected)[0, 1] > 0.99


# ---------------------------------------------------------------- short, stereo 48 kHz, variable frame rate


def test_audio_shorter_than_one_stft_frame_is_padded_with_a_warning_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "blip.wav"
    blip = tone(0.005, 22050)[0]  # 110 samples, well under one 2048-sample STFT frame
    sf.write(path, blip, 22050, subtype="FLOAT")
    with pytest.warns(media.MediaWarning) as caught:
        wave, _ = avgen.read_audio(path, duration=0.5)
    assert len(caught) == 1 and str(path) in str(caught[0].message) and "padded" in str(caught[0].message)
    assert wave.shape == (11025,)
    np.testing.assert_allclose(wave[:110].numpy(), blip, atol=1e-7)
    assert torch.count_nonzero(wave[110:]) == 0
    rep = avgen.create("representation", "stft", n_fft=2048, hop_length=512)
    spec = rep.encode(wave[None])
    assert spec.shape == (1, 1025, rep.frames(11025)) and bool(torch.isfinite(spec).all())

    with warnings.catch_warnings():  # a window the file fills is read without a warning
        warnings.simplefilter("error", media.MediaWarning)
        avgen.read_audio(path, duration=0.004)


def test_short_audio_track_in_an_mp4_is_padded_with_a_warning(tmp_path: Path) -> None:
    path = write_mp4(tmp_path / "short.mp4", seconds=0.1, fps=30)
    with pytest.warns(media.MediaWarning, match="short.mp4"):
        wave, _ = avgen.read_audio(path, duration=0.5)
    assert wave.shape == (8000,) and torch.count_nonzero(wave[3000:]) == 0


def test_48khz_stereo_is_downmixed_and_resampled_like_scipy(tmp_path: Path) -> None:
    rate, target = 48000, 22050
    stereo = tone(1.0, rate, channels=2, freqs=(440.0, 3000.0))
    path = tmp_path / "stereo48k.wav"
    sf.write(path, stereo.T, rate, subtype="FLOAT")
    wave, got_rate = avgen.read_audio(path, sample_rate=target)
    expected = resample_poly(stereo.mean(axis=0).astype(np.float64), 147, 320)  # 22050 / 48000 = 147 / 320
    assert got_rate == target and wave.shape == expected.shape == (22050,)
    np.testing.assert_allclose(wave[100:-100].numpy(), expected[100:-100], atol=2e-3)
    # one channel alone is far from it: the mix really averaged both
    left = resample_poly(stereo[0].astype(np.float64), 147, 320)
    assert np.abs(left[100:-100] - expected[100:-100]).max() > 0.1


def test_48khz_stereo_aac_in_an_mp4_is_downmixed_and_resampled(tmp_path: Path) -> None:
    path = write_mp4(tmp_path / "stereo48k.mp4", seconds=1.0, rate=48000, channels=2)
    info = media.probe(path)
    assert (info.sample_rate, info.channels) == (48000, 2)
    # the decoded AAC, read independently with PyAV, averaged and resampled with scipy
    with av.open(str(path)) as container:
        decoded = np.concatenate([f.to_ndarray() for f in container.decode(container.streams.audio[0])], axis=1)
    expected = resample_poly(decoded.mean(axis=0).astype(np.float64), 147, 320)[: 11025]
    wave, rate = avgen.read_audio(path, sample_rate=22050, duration=0.5)
    assert rate == 22050 and wave.shape == (11025,)
    np.testing.assert_allclose(wave[100:-100].numpy(), expected[100:-100], atol=2e-3)


def write_vfr_mp4(path: Path, times_ms: list[int], size: int = 32) -> Path:
    """A variable-frame-rate mp4: frame i (grey i * STEP) is shown from times_ms[i]."""
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv444p"
        stream.options = {"qp": "0", "preset": "ultrafast"}
        stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        for i, ms in enumerate(times_ms):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), i * STEP, np.uint8), format="rgb24")
            frame.pts, frame.time_base = ms, Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def test_variable_frame_rate_video_samples_the_frame_on_screen_at_each_time(tmp_path: Path) -> None:
    times_ms = [0, 40, 60, 150, 170, 300, 310, 320, 500, 700, 720, 900, 1000]
    path = write_vfr_mp4(tmp_path / "vfr.mp4", times_ms)
    with av.open(str(path)) as c:  # the file really has the irregular timestamps
        assert [round(f.time * 1000) for f in c.decode(video=0)] == times_ms
    for fps, start, duration in ((20, 0.0, 1.0), (7, 0.1, 0.8), (50, 0.28, 0.1)):
        frames = media.read_frames(path, fps=fps, size=16, start=start, duration=duration)
        targets = [start + k / fps for k in range(round(duration * fps))]
        # independently: the last frame that started at or before each target time
        expected = [max(i for i, ms in enumerate(times_ms) if ms / 1000 <= t + 1e-9) for t in targets]
        assert grey_indices(frames) == expected, (fps, start)


# ---------------------------------------------------------------- a dataset with a few bad files, through `avgen run`

RECIPE = """
[run]
name = "bad_files"

[data]
name = "folder"
root = "{root}"
clip_seconds = 0.4
sample_rate = 8000
val_fraction = 0.0
test_fraction = 0.25

[encoder]
name = "mean_color"
fps = 5
input_size = 8

[representation]
name = "stft"
sample_rate = 8000
n_fft = 256
hop_length = 64
n_iter = 2
"""


@pytest.fixture
def bad_folder(tmp_path: Path) -> dict[str, object]:
    """A folder dataset (2 classes x 4 videos; 3 train + 1 test each) where three training videos are bad
    (truncated, empty, no sound) and one has a 5 ms wav beside it."""
    root = tmp_path / "videos"
    for label in ("glass", "wood"):
        (root / label).mkdir(parents=True)
        for k in range(4):
            write_mp4(root / label / f"{label}{k}.mp4", seconds=0.6, fps=10, size=16, rate=8000)
    dataset = avgen.create("dataset", "folder", root=root, clip_seconds=0.4, sample_rate=8000, val_fraction=0.0,
                           test_fraction=0.25)
    train, test = dataset.clips("train"), dataset.clips("test")
    assert (len(train), len(test)) == (6, 2)
    truncated, empty, silent_video, short_wav = (train[i].video for i in (1, 2, 4, 5))
    whole = write_mp4(truncated, seconds=0.6, fps=10, size=16, rate=8000, faststart=True).read_bytes()
    truncated.write_bytes(whole[: len(whole) // 3])
    empty.write_bytes(b"")
    write_mp4(silent_video, seconds=0.6, fps=10, size=16, audio=False)
    sf.write(short_wav.with_suffix(".wav"), tone(0.005, 8000)[0], 8000)
    recipe = tmp_path / "bad_files.toml"
    recipe.write_text(RECIPE.format(root=root))
    return {"recipe": recipe, "root": root, "bad": [truncated, empty, silent_video], "short": short_wav.with_suffix(".wav"),
            "train": train, "test": test}


def test_featurize_skips_bad_files_lists_them_and_strict_stops_at_the_first(
        bad_folder: dict, tmp_path: Path, avgen_home: Path, example_plugin: None) -> None:
    recipe, bad = bad_folder["recipe"], bad_folder["bad"]
    out = tmp_path / "runs"
    proc = run_avgen("run", str(recipe), "--out", str(out), "--workers", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = out / "bad_files"
    warned = [line for line in error_lines(proc) if line.startswith("warning: skipped")]
    assert len(warned) == 3 and all(str(path) in line for path, line in zip(bad, warned)), proc.stderr
    assert "Traceback" not in proc.stderr
    stages = json.loads((run_dir / "stages.json").read_text())["stages"]
    assert stages["featurize"]["train"]["skipped"] == 3 and stages["featurize"]["train"]["encoded"] == 3
    assert "skipped" not in stages["featurize"]["test"] and stages["report"]["status"] == "done"
    assert stages["featurize"]["train"]["padded"] == 1  # the 5 ms wav, padded and warned about
    assert any(str(bad_folder["short"]) in line and "padded" in line for line in error_lines(proc))
    listed = (run_dir / "skipped.txt").read_text().splitlines()
    assert len(listed) == 3 and all(line.startswith("train\t") and str(p) in line for p, line in zip(bad, listed))
    assert "corrupt" in listed[0] and "empty (0 bytes)" in listed[1] and "no audio stream" in listed[2]
    report = (run_dir / "report.md").read_text()  # the clip counts are the dataset's; the report says 3 were left out
    assert "clips: train 6," in report and "unreadable clips left out of training and scoring: 3 (train 3;" in report

    strict = run_avgen("run", str(recipe), "--out", str(out), "--strict", "--set", "run.name=strict")
    assert strict.returncode == 2 and "Traceback" not in strict.stderr
    errors = [line for line in error_lines(strict) if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == error_lines(strict)[-1]
    assert str(bad[0]) in errors[0] and "--strict" in errors[0]
    assert not [line for line in error_lines(strict) if str(bad[1]) in line]  # it stopped at the first


def test_a_split_whose_clips_are_all_bad_stops_with_one_line(bad_folder: dict, tmp_path: Path, avgen_home: Path,
                                                           example_plugin: None) -> None:
    for clip in bad_folder["test"]:
        clip.video.write_bytes(b"not a video")
    proc = run_avgen("run", str(bad_folder["recipe"]), "--out", str(tmp_path / "runs"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = error_lines(proc)[-1]
    assert last.startswith("error: all 2 clips of the test split are unreadable") and str(bad_folder["test"][0].video) in last
    assert len([line for line in error_lines(proc) if line.startswith("error:")]) == 1
