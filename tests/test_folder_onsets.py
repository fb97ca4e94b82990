"""The folder dataset cut at the onsets of each file's own sound (``cut = "onsets"``): your own footage, no annotations.

The videos are real mp4 files: tests/test_timing_sync.py's rendered falling block, muxed with a sound track that has a
clack at known times (a different set per file), sorted into root/wood/ and root/metal/.
"""

from __future__ import annotations

import json
import logging
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

import avgen
from avgen import AvgenError
from avgen._core.rundir import dump_toml
from conftest import REPO, run_avgen
from test_timing_sync import RATE, SECONDS, clack, render_video

pytestmark = pytest.mark.usefixtures("one_thread", "avgen_home")

LENGTH = 0.5  # clip_seconds
TIMES = {  # class/file -> its clack times (s), in a 7 s video
    "wood/a": [1.0, 2.1, 4.2],
    "wood/b": [0.1, 3.0, 3.1, 6.9],  # one at each end (the clip is clamped inside the file), two 0.1 s apart
    "wood/c": [2.5, 5.0],
    "metal/d": [1.5, 3.5, 5.5],
    "metal/e": [0.8, 2.0, 6.0],
    "metal/f": [4.0],
}
QUIET = "metal/g"  # a silent sound track: no onset (room noise alone would give some: the detector scales to the loudest)


def sound(times: list[float]) -> torch.Tensor:
    """Quiet room noise with a clack starting at each time; no times: silence."""
    wave = np.random.default_rng(2).normal(0, 0.002, int(SECONDS * RATE)) * bool(times)
    for t in times:
        start = round(t * RATE)
        piece = clack()[: wave.size - start]
        wave[start:start + piece.size] += piece
    return torch.from_numpy(wave).float()


@pytest.fixture(scope="module")
def footage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/wood/{a,b,c}.mp4, root/metal/{d,e,f,g}.mp4, each with its own sound; and the picture alone (mute.mp4)."""
    base = tmp_path_factory.mktemp("folder_onsets")
    silent = render_video(base / "mute.mp4")
    root = base / "videos"
    for name, times in {**TIMES, QUIET: []}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        avgen.mux_audio(silent, sound(times), root / f"{name}.mp4", sample_rate=RATE)
    return root


def onsets_dataset(root: Path, **params) -> avgen.Dataset:
    values = {"cut": "onsets", "clip_seconds": LENGTH, "val_fraction": 0.34, "test_fraction": 0.34, "seed": 0}
    return avgen.create("dataset", "folder", root=root, **{**values, **params})


def all_clips(ds: avgen.Dataset) -> dict[str, list[avgen.Clip]]:
    return {split: ds.clips(split) for split in ("train", "val", "test")}


def file_of(clip: avgen.Clip) -> str:
    return f"{clip.video.parent.name}/{clip.video.stem}"


def test_one_clip_centred_on_each_clack_and_quiet_clips_away_from_every_clack(footage, caplog):
    ds = onsets_dataset(footage, quiet_per_file=1)
    ds.prepare()
    assert ds.class_names == ["metal", "wood", "silence"]
    with caplog.at_level(logging.WARNING, logger="avgen"):
        splits = all_clips(ds)
    clips = [c for split in splits.values() for c in split]
    assert len({c.id for c in clips}) == len(clips)  # unique ids
    for name, times in TIMES.items():
        events = sorted((c for c in clips if file_of(c) == name and c.label != 2), key=lambda c: c.start)
        kept = [t for t in times if t != 3.1]  # 3.1 is closer than min_gap (0.25 s) to 3.0
        assert len(events) == len(kept), name
        for clip, t in zip(events, kept):
            assert clip.label == ds.class_names.index(name.split("/")[0])
            assert clip.duration == LENGTH and clip.id == f"{name}@{clip.start:.3f}"
            assert 0 <= clip.start and clip.start + LENGTH <= SECONDS + 1e-6  # inside the file
            if LENGTH / 2 <= t <= SECONDS - LENGTH / 2:
                assert abs(clip.start + LENGTH / 2 - t) <= 0.01  # centred on the clack
            else:
                assert clip.start <= t <= clip.start + LENGTH  # clamped at the file's ends, the clack inside
    quiet = [c for c in clips if c.label == 2]
    assert sorted(file_of(c) for c in quiet) == sorted([*TIMES, QUIET])  # one per file
    for clip in quiet:
        assert clip.id == f"silence/{file_of(clip)}@{clip.start:.3f}"
        centre = clip.start + LENGTH / 2
        assert all(abs(centre - t) >= LENGTH / 2 for t in TIMES.get(file_of(clip), []))  # no clack in its window
    # placed in the middle of the longest quiet stretch: wood/a's clacks at 1.0, 2.1, 4.2 leave 4.7 .. 7.0 quiet
    (a_quiet,) = [c for c in quiet if file_of(c) == "wood/a"]
    assert abs(a_quiet.start + LENGTH / 2 - (4.2 + SECONDS) / 2) <= 0.01
    (g_quiet,) = [c for c in quiet if file_of(c) == QUIET]  # no onset at all: the middle of the file
    assert abs(g_quiet.start + LENGTH / 2 - SECONDS / 2) <= 0.01
    assert [c for c in clips if file_of(c) == QUIET] == [g_quiet]
    warnings = [r.getMessage() for r in caplog.records if "no onset" in r.getMessage()]
    assert warnings == [f"folder dataset: 1 of 7 files had no onset in their sound, so no event clip (the first: {QUIET})"]
    wave = ds.load_audio(quiet[0])
    assert wave.shape == (round(LENGTH * 22050),) and wave.abs().max() < 0.05  # room noise or silence only
    event = next(c for c in clips if file_of(c) == "wood/a")
    assert ds.load_audio(event).abs().max() > 0.2 and ds.load_frames(event, fps=8, size=32).shape == (4, 32, 32, 3)


def test_silence_is_a_class_only_with_quiet_clips_and_min_gap_keeps_close_onsets(footage):
    ds = onsets_dataset(footage)
    assert ds.class_names == ["metal", "wood"]
    clips = [c for split in all_clips(ds).values() for c in split]
    assert {c.label for c in clips} == {0, 1} and not any(c.id.startswith("silence/") for c in clips)
    assert len(clips) == sum(len(t) for t in TIMES.values()) - 1  # 3.1 dropped
    close = [c for split in all_clips(onsets_dataset(footage, min_gap=0.0)).values() for c in split if file_of(c) == "wood/b"]
    assert len(close) == 4  # with min_gap = 0 the clack at 3.1 has its own clip


def test_splits_are_by_file(footage):
    splits = all_clips(onsets_dataset(footage, quiet_per_file=2))
    files = {split: {file_of(c) for c in clips} for split, clips in splits.items()}
    assert not (files["train"] & files["val"]) and not (files["train"] & files["test"]) and not (files["val"] & files["test"])
    assert set().union(*files.values()) == {*TIMES, QUIET}
    for clips in splits.values():
        assert all(c.group == file_of(c) for c in clips)
    assert {len(v) for k, v in files.items() if k != "train"} == {2}  # a third of each class's files (one per class)


def test_onsets_are_detected_once_per_dataset(footage, monkeypatch):
    import avgen_datasets.folder as folder

    calls = []
    metric = folder._onset_metric()

    class Counting:
        def onset_times(self, wave, rate):
            calls.append(1)
            return metric.onset_times(wave, rate)

    monkeypatch.setattr(folder, "_onset_metric", Counting)
    ds = onsets_dataset(footage, quiet_per_file=1)
    for _ in range(2):
        all_clips(ds)
    assert len(calls) == len(TIMES) + 1  # one per file, however often clips() is asked


def test_quiet_centres_take_the_longest_quiet_stretches_first():
    from avgen_datasets.folder import quiet_centres

    onsets = np.array([1.0, 2.1, 4.2])  # with 0.5 s windows in 7 s, admissible centres: 0.25-0.75, 1.25-1.85,
    assert quiet_centres(onsets, 7.0, 0.5, 0) == []  # 2.35-3.95 (1.6 s) and 4.45-6.75 (2.3 s)
    assert quiet_centres(onsets, 7.0, 0.5, 1) == pytest.approx([5.6])
    assert quiet_centres(onsets, 7.0, 0.5, 2) == pytest.approx([3.15, 5.6])
    # a third: two in the 2.3 s stretch (0.77 s apart) leave more room than two in the 1.6 s one (0.53 s)
    assert quiet_centres(onsets, 7.0, 0.5, 3) == pytest.approx([3.15, 4.45 + 2.3 / 3, 4.45 + 4.6 / 3])
    assert quiet_centres(np.zeros(0), 7.0, 0.5, 1) == pytest.approx([3.5])
    assert quiet_centres(np.zeros(0), 0.3, 0.5, 3) == pytest.approx([0.25])  # shorter than a clip: the one window
    assert quiet_centres(np.array([0.1]), 0.3, 0.5, 1) == []  # ... and it holds the onset
    assert quiet_centres(np.arange(0.0, 7.5, 0.4), 7.0, 0.5, 2) == []  # onsets everywhere: no quiet window


def test_cut_file_is_one_clip_per_file_as_before(footage):
    ds = avgen.create("dataset", "folder", root=footage, clip_seconds=LENGTH, val_fraction=0.34, test_fraction=0.34)
    assert ds.class_names == ["metal", "wood"]
    clips = [c for split in all_clips(ds).values() for c in split]
    assert sorted(c.id for c in clips) == sorted([*TIMES, QUIET])
    assert all(c.start == 0.0 and c.duration == LENGTH and c.group == c.id for c in clips)


def test_a_file_without_sound_is_one_line_naming_it(footage, tmp_path):
    root = tmp_path / "videos"
    shutil.copytree(footage, root)
    shutil.copy(footage.parent / "mute.mp4", root / "wood" / "mute.mp4")  # the picture alone, no .wav beside it
    with pytest.raises(AvgenError, match="mute.mp4: has no sound track") as caught:
        onsets_dataset(root).clips("train")
    assert "\n" not in str(caught.value)
    (root / "wood" / "mute.wav").write_bytes(b"")  # an empty .wav beside it is the sound the dataset reads
    with pytest.raises(AvgenError, match="mute.wav"):
        onsets_dataset(root).clips("train")


def test_bad_settings_are_one_line(footage, tmp_path):
    with pytest.raises(AvgenError, match="quiet_per_file = 1 needs cut"):
        avgen.create("dataset", "folder", root=footage, quiet_per_file=1)
    root = tmp_path / "videos"
    (root / "silence").mkdir(parents=True)
    with pytest.raises(AvgenError, match="class folder 'silence'"):
        onsets_dataset(root, quiet_per_file=1)
    with pytest.raises(AvgenError, match="cut"):
        avgen.create("dataset", "folder", root=footage, cut="frames")


def test_the_feature_cache_keys_change_with_the_cut_settings(footage):
    from rich.console import Console

    from avgen._core.featurize import Featurizer
    from avgen._core.recipefiles import load_recipes
    def keys(*overrides: str) -> dict[str, str]:
        (recipe,) = load_recipes(REPO / "recipes" / "events_folder.toml", [f"data.root={footage}", *overrides])
        ds = avgen.build_dataset(recipe)
        clips = ds.clips("train")
        featurizer = Featurizer(recipe, ds, None, None, torch.device("cpu"), Console(), cache=None)
        return dict(zip((c.id for c in clips), featurizer.clip_keys(clips)))

    base = keys()
    for override in ("data.min_gap=0.3", "data.quiet_per_file=2"):
        other = keys(override)
        shared = set(base) & set(other)
        assert shared and all(base[i] != other[i] for i in shared), override


def test_the_shipped_recipe_prepares_clips_from_a_folder_of_videos(footage, tmp_path):
    """events_folder.toml's [data] as shipped (root set), through `avgen run --only prepare`; the encoder and losses
    are swapped for light ones (the example plugin's mean_color, no SoundNet weights to fetch)."""
    raw = tomllib.loads((REPO / "recipes" / "events_folder.toml").read_text(encoding="utf-8"))
    assert raw["data"]["cut"] == "onsets" and raw["data"]["quiet_per_file"] == 1
    raw["data"]["root"] = str(footage)
    raw["encoder"] = {"name": "mean_color", "fps": 8, "input_size": 32}
    raw["loss"] = [loss for loss in raw["loss"] if loss["name"] != "soundnet_perceptual"]
    recipe = tmp_path / "events.toml"
    recipe.write_text(dump_toml(raw, header=False), encoding="utf-8")
    proc = run_avgen("run", str(recipe), "--out", str(tmp_path / "runs"), "--only", "prepare", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = tomllib.loads((tmp_path / "runs" / "events_folder" / "recipe.toml").read_text(encoding="utf-8"))
    assert info["data"]["cut"] == "onsets"
    dataset = json.loads((tmp_path / "runs" / "events_folder" / "dataset.json").read_text())
    assert dataset["class_names"] == ["metal", "wood", "silence"]
    assert sum(dataset["splits"].values()) == sum(len(t) for t in TIMES.values()) - 1 + len(TIMES) + 1
    mute = tmp_path / "mute"
    shutil.copytree(footage, mute)
    shutil.copy(footage.parent / "mute.mp4", mute / "metal" / "mute.mp4")
    proc = run_avgen("run", str(recipe), "--out", str(tmp_path / "runs2"), "--only", "prepare",
                     "--set", f"data.root={mute}", cwd=tmp_path)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "mute.mp4: has no sound track" in lines[0], proc.stderr[-2000:]
