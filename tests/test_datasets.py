"""Dataset plugins: a hand-built Greatest Hits folder, VIG and folder fixtures, the synthetic generator."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import avgen
from avgen._core.errors import AvgenError
from avgen import Dataset

from avgen_datasets.materials import MATERIALS
from conftest import avgen_in_process

from test_media import STEP, write_grey_video  # the same grey-ramp videos (frame i is grey i * STEP)


def write_vig_lists(root: Path, labels_csv: str, train: list[str], test: list[str]) -> None:
    """A VIG folder's labels.csv, train.txt and test.txt."""
    (root / "labels.csv").write_text(labels_csv)
    (root / "train.txt").write_text("".join(f"{name}\n" for name in train))
    (root / "test.txt").write_text("".join(f"{name}\n" for name in test))


def write_video(path: Path, seconds: float, size: int = 32, wave: np.ndarray | None = None, rate: int = 16000) -> Path:
    """A 30 fps grey-ramp mp4 written with PyAV, with optional AAC sound."""
    return write_grey_video(path, frames=int(round(seconds * 30)), size=size, wave=wave, rate=rate)


def clicks(times: list[float], seconds: float, rate: int) -> np.ndarray:
    """Quiet noise with a loud decaying click at each time."""
    wave = np.random.default_rng(1).normal(0, 0.001, int(seconds * rate)).astype(np.float32)
    for t in times:
        start = int(round(t * rate))
        n = min(len(wave) - start, int(0.05 * rate))
        wave[start : start + n] += 0.8 * np.exp(-np.arange(n) / (0.005 * rate))
    return wave


# ---------------------------------------------------------------- Greatest Hits, built by hand

GHD_ROWS = {
    # video id: rows of {id}_times.txt (time material action reaction)
    "2015-01-01-10-00-00": ["0.500000 wood hit static", "1.000000 None None None", "1.500000 metal scratch rebound"],
    "2015-01-01-11-00-00": ["0.400000 glass hit rebound", "1.200000 plastic-bag hit static"],
    "2015-01-02-09-00-00": ["0.600000 rock hit static", "1.900000 carpet hit static"],  # the last hit runs past the end
    "2015-01-03-09-00-00": ["0.300000 tile hit static"],
}


@pytest.fixture
def ghd_root(tmp_path) -> Path:
    root = tmp_path / "ghd"
    root.mkdir()
    for vid, rows in GHD_ROWS.items():
        times = [float(r.split()[0]) for r in rows]
        write_video(root / f"{vid}_denoised.mp4", seconds=2.0)
        sf.write(root / f"{vid}_denoised.wav", clicks(times, 2.0, 44100), 44100)
        (root / f"{vid}_times.txt").write_text("\n".join(rows) + "\n")
    (root / "train.txt").write_text("2015-01-01-10-00-00\n2015-01-01-11-00-00\n2015-01-03-09-00-00\n")
    (root / "test.txt").write_text("2015-01-02-09-00-00\n")
    return root


def test_greatest_hits_reads_the_public_layout(ghd_root):
    ds = avgen.create("dataset", "greatest_hits", root=ghd_root, val_fraction=0.34, seed=3)
    assert isinstance(ds, Dataset)
    ds.prepare()
    assert ds.provenance is None  # the recordings themselves
    assert ds.class_names == list(MATERIALS) and len(ds.class_names) == 17
    splits = {s: ds.clips(s) for s in ("train", "val", "test")}
    assert sum(len(c) for c in splits.values()) == 7  # 8 rows, one with material None
    assert [c.id for c in splits["test"]] == ["2015-01-02-09-00-00_0000", "2015-01-02-09-00-00_0001"]
    assert len({c.group for c in splits["val"]}) == 1
    groups = [{c.group for c in clips} for clips in splits.values()]
    assert not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])
    by_id = {c.id: c for clips in splits.values() for c in clips}
    assert "2015-01-01-10-00-00_0001" not in by_id  # the None row
    # ... is counted with its reason (72 of 1,518 rows of a real Greatest-Hits-layout set went unmentioned)
    skipped = [row for split in ("train", "val", "test") for row in ds.skipped_rows(split)]
    times = ghd_root / "2015-01-01-10-00-00_times.txt"
    assert skipped == [f"line 2 of {times}: material 'None' is not one of the dataset's classes"]
    metal = by_id["2015-01-01-10-00-00_0002"]
    assert ds.class_names[metal.label] == "metal"
    assert metal.start == pytest.approx(1.4) and metal.duration == 0.5 and metal.fingerprint


def test_greatest_hits_clip_audio_and_frames(ghd_root):
    ds = avgen.create("dataset", "greatest_hits", root=ghd_root, offset=-0.1, sample_rate=22050)
    clip = next(c for c in ds.clips("test") if c.id.endswith("0000"))  # rock hit at 0.6 s
    wave = ds.load_audio(clip)
    assert wave.shape == (11025,) and wave.dtype == torch.float32
    onset = int(np.argmax(np.abs(wave.numpy()) > 0.2))
    assert abs(onset - 2205) <= 20  # the click sits 0.1 s into the clip
    frames = ds.load_frames(clip, fps=10, size=24)
    assert frames.shape == (5, 24, 24, 3) and frames.dtype == torch.uint8
    assert [int(round(v / STEP)) for v in frames[:, 0, 0, 0].tolist()] == [15, 18, 21, 24, 27]
    late = next(c for c in ds.clips("test") if c.id.endswith("0001"))  # carpet at 1.9 s, file ends at 2.0 s
    wave = ds.load_audio(late)
    assert wave.shape == (11025,)
    assert torch.count_nonzero(wave[int(0.2 * 22050) + 200 :]) == 0  # zero-padded after the end of the file
    assert ds.load_frames(late, fps=10, size=8).shape == (5, 8, 8, 3)


def test_greatest_hits_filters_and_errors(ghd_root, tmp_path):
    ds = avgen.create("dataset", "greatest_hits", root=ghd_root, actions=["scratch"], val_fraction=0)
    assert [c.id for c in ds.clips("train")] == ["2015-01-01-10-00-00_0002"]
    ds = avgen.create("dataset", "greatest_hits", root=ghd_root, materials=["metal", "wood"], val_fraction=0)
    assert sorted(ds.class_names[c.label] for c in ds.clips("train")) == ["metal", "wood"]
    with pytest.raises(AvgenError, match="train.txt"):
        avgen.create("dataset", "greatest_hits", root=tmp_path / "missing").prepare()
    (ghd_root / "2015-01-03-09-00-00_denoised.wav").unlink()
    with pytest.raises(AvgenError, match="2015-01-03-09-00-00_denoised.wav"):
        avgen.create("dataset", "greatest_hits", root=ghd_root).clips("train")
    ds = avgen.create("dataset", "greatest_hits", root=ghd_root, skip_missing=True, val_fraction=0)
    assert len(ds.clips("train")) == 4
    with pytest.raises(AvgenError, match="unknown split"):
        ds.clips("dev")


# ---------------------------------------------------------------- synthetic_hits

def test_avgen_data_synth_writes_a_dataset_greatest_hits_loads(tmp_path, capsys):
    """The real `python -m avgen data synth` in a subprocess (the command's one check in a separate process); the
    refused settings through the entry point in this process."""
    out = tmp_path / "synth"
    env = {**os.environ, "AVGEN_LOAD_PLUGINS": "datasets"}  # only this plugin: faster start-up
    result = subprocess.run(
        [sys.executable, "-m", "avgen", "data", "synth", str(out), "--videos", "3", "--classes", "3", "--seed", "7"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "clips:" in result.stdout
    for vid in (out / "train.txt").read_text().split() + (out / "test.txt").read_text().split():
        assert (out / f"{vid}_denoised.mp4").is_file() and (out / f"{vid}_denoised.wav").is_file()
    ds = avgen.create("dataset", "greatest_hits", root=out, materials=list(MATERIALS[:3]), val_fraction=0.5)
    splits = {s: ds.clips(s) for s in ("train", "val", "test")}
    assert all(splits.values())
    ds.prepare()  # the loader says the folder is a synthetic stand-in (avgen compare keeps the paper's rows apart)
    assert ds.provenance is not None and "synthetic" in ds.provenance and str(out) in ds.provenance
    groups = [{c.group for c in clips} for clips in splits.values()]
    assert sum(len(g) for g in groups) == len(set().union(*groups)) == 3  # no video in two splits
    assert {c.label for c in splits["train"] + splits["val"] + splits["test"]} == {0, 1, 2}
    # The sound starts at the frame of contact: quiet before the hit (0.1 s into the clip), loud after.
    hit = next(c for c in splits["train"] if c.start > 0)
    wave = ds.load_audio(hit)
    before, after = wave[: int(0.09 * 22050)].abs().max(), wave[int(0.1 * 22050) : int(0.15 * 22050)].abs().max()
    assert after > 5 * before
    frames = ds.load_frames(hit, fps=15, size=64)
    assert frames.shape == (8, 64, 64, 3)

    code, _, lines = avgen_in_process(capsys, "data", "synth", str(out), "--classes", "40")
    assert code == 2 and len(lines) == 1, lines
    assert "classes" in lines[0] and "Traceback" not in lines[0]


def test_synthetic_hits_prepare_is_seeded_and_idempotent(tmp_path):
    params = dict(videos=3, classes=3, video_seconds=3.0, segments=1, size=64, fps=15)
    a = avgen.create("dataset", "synthetic_hits", root=tmp_path / "a", **params)
    b = avgen.create("dataset", "synthetic_hits", root=tmp_path / "b", **params)
    a.prepare()
    b.prepare()
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in names:
        if name.endswith((".wav", ".txt")):
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    stamp = (tmp_path / "a" / "train.txt").stat().st_mtime_ns
    a.prepare()
    assert (tmp_path / "a" / "train.txt").stat().st_mtime_ns == stamp  # up to date: not rewritten
    c = avgen.create("dataset", "synthetic_hits", root=tmp_path / "a", **{**params, "seed": 5})
    c.prepare()
    assert (tmp_path / "a" / "synthetic_hits.json").read_text() != (tmp_path / "b" / "synthetic_hits.json").read_text()
    assert c.class_names == list(MATERIALS[:3])
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging folders left
    with pytest.raises(AvgenError, match="not written by synthetic_hits"):
        (tmp_path / "mine").mkdir()
        (tmp_path / "mine" / "notes.txt").write_text("keep me")
        avgen.create("dataset", "synthetic_hits", root=tmp_path / "mine", **params).prepare()


def test_synthetic_videos_vary_lighting_and_share_colours(tmp_path):
    """Two materials of one colour group differ in texture, not in mean colour, and frames move."""
    from avgen_datasets.synthesis import LOOKS_AND_SOUNDS

    groups: dict[tuple, list[str]] = {}
    for name, look in LOOKS_AND_SOUNDS.items():
        groups.setdefault(look.colour, []).append(name)
    assert set(LOOKS_AND_SOUNDS) == set(MATERIALS)
    assert sum(len(g) > 1 for g in groups.values()) >= 5
    assert len({(look.texture, look.colour) for look in LOOKS_AND_SOUNDS.values()}) == len(MATERIALS)
    assert len({look.modes for look in LOOKS_AND_SOUNDS.values()}) == len(MATERIALS)


# ---------------------------------------------------------------- vig

def test_vig_reads_an_audioset_style_folder(tmp_path):
    root = tmp_path / "vig"
    root.mkdir()
    rate = 16000
    tone = lambda f: (0.3 * np.sin(2 * np.pi * f * np.arange(2 * rate) / rate)).astype(np.float32)  # noqa: E731
    write_video(root / "aaaaaaaaaaa_30.mp4", 2.0, wave=tone(440), rate=rate)
    write_video(root / "bbbbbbbbbbb_10.mp4", 2.0, wave=tone(660), rate=rate)
    write_video(root / "ccccccccccc_0.mp4", 2.0)  # sound in a wav beside it
    sf.write(root / "ccccccccccc_0.wav", tone(880), rate)
    write_video(root / "ddddddddddd_5.mp4", 2.0, wave=tone(220), rate=rate)
    write_vig_lists(root, "# Segments csv created Sun Mar  5 10:54:31 2017\n"
                          "# YTID, start_seconds, end_seconds, positive_labels\n"
                          "aaaaaaaaaaa, 30.000, 40.000, dog\n"
                          "bbbbbbbbbbb, 10.000, 20.000, \"hammer,/m/0xyz\"\n"
                          "ccccccccccc, 0.000, 10.000, dog\n"
                          "ddddddddddd, 5.000, 15.000, hammer\n",
                    ["aaaaaaaaaaa_30", "bbbbbbbbbbb", "ccccccccccc_0"], ["ddddddddddd_5"])
    ds = avgen.create("dataset", "vig", root=root, clip_seconds=1.0, val_fraction=0.34, seed=0)
    assert isinstance(ds, Dataset)
    ds.prepare()
    assert ds.class_names == ["dog", "hammer"] and ds.sample_rate == 8000
    splits = {s: ds.clips(s) for s in ("train", "val", "test")}
    assert len(splits["train"]) == 2 and len(splits["val"]) == 1 and [c.id for c in splits["test"]] == ["ddddddddddd_5"]
    by_id = {c.id: c for clips in splits.values() for c in clips}
    assert by_id["ccccccccccc_0"].audio.suffix == ".wav" and by_id["aaaaaaaaaaa_30"].audio.suffix == ".mp4"
    assert ds.class_names[by_id["bbbbbbbbbbb_10"].label] == "hammer"
    for clip_id, freq in (("ccccccccccc_0", 880), ("aaaaaaaaaaa_30", 440)):
        wave = ds.load_audio(by_id[clip_id])
        assert wave.shape == (8000,)
        assert int(np.argmax(np.abs(np.fft.rfft(wave[1000:7000].numpy())))) == pytest.approx(freq * 6000 / 8000, abs=2)
    assert ds.load_frames(by_id["aaaaaaaaaaa_30"], fps=5, size=16).shape == (5, 16, 16, 3)
    (root / "test.txt").write_text("eeeeeeeeeee_1\n")
    with pytest.raises(AvgenError, match="eeeeeeeeeee_1"):
        avgen.create("dataset", "vig", root=root).clips("test")


# ---------------------------------------------------------------- folder

def test_folder_splits_each_class_by_seeded_fraction(tmp_path):
    root = tmp_path / "videos"
    rate = 16000
    for cls, freq in (("bell", 1000), ("drum", 200)):
        (root / cls).mkdir(parents=True)
        for i in range(5):
            wave = (0.2 * np.sin(2 * np.pi * freq * np.arange(rate) / rate)).astype(np.float32)
            if cls == "bell":
                write_video(root / cls / f"clip{i}.mp4", 1.0, size=16, wave=wave, rate=rate)
            else:
                write_video(root / cls / f"clip{i}.mp4", 1.0, size=16)
                sf.write(root / cls / f"clip{i}.wav", wave, rate)
    (root / "notes.txt").write_text("not a class")
    ds = avgen.create("dataset", "folder", root=root, clip_seconds=0.5, sample_rate=8000, val_fraction=0.2, test_fraction=0.2, seed=1)
    assert isinstance(ds, Dataset)
    ds.prepare()
    assert ds.class_names == ["bell", "drum"]
    splits = {s: ds.clips(s) for s in ("train", "val", "test")}
    assert [len(v) for v in splits.values()] == [6, 2, 2]
    for clips in splits.values():
        assert sorted(c.label for c in clips) == sorted([0, 1] * (len(clips) // 2))
    ids = [c.id for clips in splits.values() for c in clips]
    assert len(set(ids)) == 10
    other = avgen.create("dataset", "folder", root=root, seed=2, val_fraction=0.2, test_fraction=0.2)
    assert {c.id for c in other.clips("test")} != {c.id for c in splits["test"]}
    for clip in (splits["train"][0], splits["test"][-1]):
        wave = ds.load_audio(clip)
        assert wave.shape == (4000,) and wave.abs().max() > 0.1
        assert ds.load_frames(clip, fps=8, size=16).shape == (4, 16, 16, 3)
    with pytest.raises(AvgenError, match="does not exist"):
        avgen.create("dataset", "folder", root=tmp_path / "nothing").prepare()


def test_every_dataset_params_are_documented():
    for component in avgen.list_components("dataset"):
        if component.plugin != "datasets":
            continue
        for name, field in component.params.model_fields.items():
            assert field.description, f"{component.name}.{name} has no description"
        assert component.params.model_config.get("extra") == "forbid"


def test_greatest_hits_counts_rows_left_out_by_the_action_filter_and_missing_videos(ghd_root):
    (ghd_root / "2015-01-03-09-00-00_denoised.wav").unlink()
    ds = avgen.create("dataset", "greatest_hits", root=ghd_root, val_fraction=0.0, actions=["hit"], skip_missing=True)
    ds.prepare()
    skipped = [row for split in ("train", "val", "test") for row in ds.skipped_rows(split)]
    times = ghd_root / "2015-01-01-10-00-00_times.txt"
    assert f"line 3 of {times}: action 'scratch' is not in data.actions" in skipped
    assert "video 2015-01-03-09-00-00: '2015-01-03-09-00-00_denoised.wav' is missing (data.skip_missing)" in skipped
    assert "2015-01-01-10-00-00_0002" not in {c.id for split in ("train", "val", "test") for c in ds.clips(split)}


def test_greatest_hits_quiet_clips_hold_no_annotated_time(ghd_root):
    """quiet_per_video: clips of an extra class 'silence' whose windows keep 0.1 s from every annotated row (the
    'None' row too), in the split of their video, as many as the hits leave room for; without it the paper's clips."""
    plain = avgen.create("dataset", "greatest_hits", root=ghd_root)
    plain.prepare()
    data = avgen.create("dataset", "greatest_hits", root=ghd_root, quiet_per_video=2)
    data.prepare()
    assert data.class_names == plain.class_names + ["silence"]
    silence = len(data.class_names) - 1
    for split in ("train", "val", "test"):
        hits = [c for c in data.clips(split) if c.label != silence]
        assert [c.id for c in hits] == [c.id for c in plain.clips(split)]  # the hit clips are unchanged
        quiet = [c for c in data.clips(split) if c.label == silence]
        for clip in quiet:
            times = [float(row.split()[0]) for row in GHD_ROWS[clip.group]]
            assert 0 <= clip.start and clip.start + clip.duration <= 2.0 + 1e-6, clip
            assert all(t <= clip.start - 0.1 + 1e-6 or t >= clip.start + clip.duration + 0.1 - 1e-6 for t in times), (clip, times)
    counts = {vid: sum(c.group == vid for s in ("train", "val", "test") for c in data.clips(s) if c.label == silence)
              for vid in GHD_ROWS}
    # hits every 0.5 s leave no room; one hit at 0.3 s (or two 1.3 s apart) leaves room for both
    assert counts == {"2015-01-01-10-00-00": 0, "2015-01-01-11-00-00": 2, "2015-01-02-09-00-00": 2,
                      "2015-01-03-09-00-00": 2}, counts
    with pytest.raises(AvgenError, match="quiet_per_video"):
        avgen.create("dataset", "greatest_hits", root=ghd_root, quiet_per_video=1, materials=["wood", "silence"])
