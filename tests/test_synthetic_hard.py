"""The synthetic_hits presets: the default (easy) one is unchanged, the hard one shares looks and hides contacts."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from avgen_datasets.materials import MATERIALS
from avgen_datasets.synthesis import HARD, LOOKS_AND_SOUNDS, look_table
from avgen_datasets.synthetic_hits import SynthesisParams, plan_segments, synthesize, write_dataset

from conftest import avgen_in_process

# Written by the generator as it was before the hard preset existed (git 46f274b), for
# SynthesisParams(videos=3, seed=7, classes=5, fps=10, size=32, video_seconds=3, segments=2):
# sha256 of the text files (they depend on the seeded draws alone), RMS of each second of each
# wav and the mean of every 5th decoded frame (tolerances absorb float and codec rounding; any
# change to the sequence of random draws moves these by far more).
EASY_TEXT = {
    "synth0000_times.txt": "386954944ac51b6ad3d96e0728fecf488d5e4fb51dc61ac43b1b8bccc2cc8768",
    "synth0001_times.txt": "06ae3c824f1791d0888907aaea1c46d66904dfbd4c02ec4d8786e8480d87253d",
    "synth0002_times.txt": "237ca3610cd66912e8d4acabcc39a272bb2cb1e8e214033115afcf0cc7be8c2f",
    "test.txt": "170dec4d1b6eb2e279be0ad399e1edc7acf03bcb25bbf71767d4429fe4eef737",
    "train.txt": "a40ee1b7ed711de26f9d70dda4e0216db8b82e73440f2da4d64ad2d217702f1c",
}
EASY_WAV_RMS = {
    "synth0000": [0.0360679, 0.0132538, 0.037224],
    "synth0001": [0.0185748, 0.0223082, 0.0153215],
    "synth0002": [0.0210891, 0.0197267, 0.0195734],
}
EASY_FRAME_MEANS = {
    "synth0000": [61.423, 57.671, 59.329, 67.218, 64.373, 63.102],
    "synth0001": [92.059, 89.341, 91.195, 197.016, 177.658, 181.986],
    "synth0002": [114.631, 112.677, 116.318, 237.477, 231.643, 238.854],
}
SMALL = dict(videos=3, seed=7, classes=5, fps=10, size=32, video_seconds=3.0, segments=2)


def frame_means(path: Path) -> list[float]:
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24").astype(np.float64) for f in container.decode(video=0)]
    return [float(frames[i].mean()) for i in range(0, len(frames), 5)]


def second_rms(path: Path) -> list[float]:
    wave, rate = sf.read(path, dtype="float64")
    return [float(np.sqrt(np.mean(wave[i:i + rate] ** 2))) for i in range(0, len(wave), rate)]


@pytest.mark.parametrize("given", [{}, {"difficulty": "easy"}], ids=["default", "easy"])
def test_default_preset_writes_what_it_wrote_before_the_hard_preset(tmp_path: Path, given: dict) -> None:
    root = tmp_path / "easy"
    manifest = write_dataset(root, SynthesisParams(**SMALL, **given), workers=1)
    for name, digest in EASY_TEXT.items():
        assert hashlib.sha256((root / name).read_bytes()).hexdigest() == digest, name
    for vid, expected in EASY_WAV_RMS.items():
        assert second_rms(root / f"{vid}_denoised.wav") == pytest.approx(expected, rel=1e-4, abs=1e-6), vid
    for vid, expected in EASY_FRAME_MEANS.items():
        assert frame_means(root / f"{vid}_denoised.mp4") == pytest.approx(expected, abs=0.5), vid
    # The manifest is the old one, so folders written before the preset existed are not regenerated.
    assert "difficulty" not in manifest["settings"]
    assert json.loads((root / "synthetic_hits.json").read_text()) == manifest


def test_look_table_shares_looks_between_neighbours_and_pools_twins() -> None:
    materials = tuple(MATERIALS)
    table = look_table(HARD, materials)
    assert set(table) == set(materials)
    owners: dict[object, set[str]] = {}
    for material, (own, shared) in table.items():
        for look in (*own, *shared):
            owners.setdefault(look, set()).add(material)
    twins = [m for m, (own, shared) in table.items() if not shared]
    assert len(twins) == 2 * HARD.twins
    for m in twins:  # a twin shows every look of its pair, and its pair shows every look of it
        (partner,) = [t for t in twins if t != m and table[t] == table[m]]
    for material, (own, shared) in table.items():
        if material in twins:
            continue
        easy = LOOKS_AND_SOUNDS[material]
        assert (own[0].colour, own[0].texture) == (easy.colour, easy.texture)  # its easy look is one of its own
        assert len(own) == HARD.own_looks and len(shared) == 2
        assert all(owners[look] == {material} for look in own)
        assert all(len(owners[look]) >= 2 for look in shared)  # a shared look belongs to two materials (or a twin pair too)
    # Every look of the table is a different (colour, texture) pair, except the twins' pooled ones.
    distinct = {(look.colour, look.texture) for look in owners}
    assert len(distinct) == len(owners)


def test_hard_plan_draws_looks_and_puts_a_fifth_of_contacts_out_of_frame() -> None:
    settings = SynthesisParams(difficulty="hard", segments=4)
    rng = np.random.default_rng(3)
    shown: Counter = Counter()
    shared_shown = total_segments = inside = outside = 0
    table = look_table(HARD, tuple(MATERIALS))
    for _ in range(300):
        for seg in plan_segments(settings, ["wood", "glass", "metal", "paper"], rng):
            own, shared = table[seg.material]
            assert seg.look in own or seg.look in shared
            shared_shown += seg.look in shared
            total_segments += 1
            shown[seg.material, seg.look] += 1
            for a in seg.actions:
                off = not (0 <= a.x <= 1 and 0 <= a.y <= 1)
                outside += off
                inside += not off
    assert all(len([1 for (m, _) in shown if m == name]) > 1 for name in ("wood", "glass", "metal", "paper"))
    shared_rate = shared_shown / total_segments  # 1200 segments; non-twins show a shared look 40 % of the time
    share_of_twins = sum(1 for m in ("wood", "glass", "metal", "paper") if not table[m][1]) / 4
    assert abs(shared_rate - HARD.shared * (1 - share_of_twins)) < 0.06
    assert abs(outside / (inside + outside) - HARD.out_of_frame) < 0.03  # ~20 000 contacts
    easy = plan_segments(SynthesisParams(segments=4), ["wood"] * 4, np.random.default_rng(3))
    assert all(seg.look is None for seg in easy)


def test_avgen_data_synth_hard_writes_a_folder_the_loader_reads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Through the CLI entry point in this process (the real `python -m avgen data synth` runs in test_datasets.py)."""
    out = tmp_path / "hard"
    code, _, lines = avgen_in_process(capsys, "data", "synth", str(out), "--videos", "2", "--classes", "4", "--size", "32",
                                      "--difficulty", "hard")
    assert code == 0, lines
    settings = json.loads((out / "synthetic_hits.json").read_text())["settings"]
    assert settings["difficulty"] == "hard" and settings["hard_scene"]["shared"] == HARD.shared  # new knobs regenerate
    # the same settings again: up to date, nothing rewritten
    assert synthesize(out, SynthesisParams(videos=2, classes=4, size=32, difficulty="hard")) is False
    code, _, lines = avgen_in_process(capsys, "data", "synth", str(tmp_path / "x"), "--difficulty", "brutal")
    assert code == 2 and "brutal" in "\n".join(lines), lines
    from avgen_datasets.greatest_hits import GreatestHits, GreatestHitsParams

    dataset = GreatestHits(GreatestHitsParams(root=out, materials=list(MATERIALS[:4])))
    clips = dataset.clips("train") + dataset.clips("test")
    assert clips and {c.label for c in clips} <= set(range(4))
    frames = dataset.load_frames(clips[0], 8, 32)
    assert frames.shape == (4, 32, 32, 3) and frames.dtype == torch.uint8


def test_hard_and_easy_presets_write_different_videos_from_the_same_seed(tmp_path: Path) -> None:
    easy = write_dataset(tmp_path / "easy", SynthesisParams(**{**SMALL, "videos": 2}), workers=1)
    hard = write_dataset(tmp_path / "hard", SynthesisParams(**{**SMALL, "videos": 2}, difficulty="hard"), workers=1)
    assert easy["settings"] != hard["settings"]
    for vid in ("synth0000", "synth0001"):
        assert frame_means(tmp_path / "easy" / f"{vid}_denoised.mp4") != frame_means(tmp_path / "hard" / f"{vid}_denoised.mp4")
