"""The motion_contacts detector and `avgen timing eval` (precision / recall against annotated contact frames)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

import avgen
from avgen._core import media
from conftest import avgen_in_process, run_avgen
from test_timing_sync import CONTACTS, FPS, render_video

pytestmark = pytest.mark.usefixtures("one_thread")


def scene(shift: tuple[int, int], square_at: int | None, size: int = 64) -> np.ndarray:
    """A smooth texture seen through a camera offset by ``shift``, with a dark square at row square_at."""
    rng = np.random.default_rng(0)
    big = torch.nn.functional.avg_pool2d(torch.from_numpy(rng.standard_normal((1, size + 16, size + 16))), 5, 1)[0].numpy()
    big = 128 + 120 * big
    if square_at is not None:
        big[square_at:square_at + 10, 30:40] = 20
    dy, dx = shift
    return np.repeat(big[6 + dy:6 + dy + size, 6 + dx:6 + dx + size].clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)


def test_camera_shake_is_compensated_and_a_moving_object_is_not():
    from avgen_timing.motion import motion_cells, motion_energy

    # consecutive camera moves up to 4 px (max_shift); the square moves 6 px per frame
    shaken = torch.from_numpy(np.stack([scene(s, 20) for s in [(0, 0), (2, -1), (-1, 2), (1, 3), (0, -1)]]))
    moving = torch.from_numpy(np.stack([scene((0, 0), 10 + 6 * k) for k in range(5)]))
    still = motion_energy(motion_cells(shaken))[1:]
    moved = motion_energy(motion_cells(moving))[1:]
    assert still.max() < 0.1 * moved.min(), (still, moved)


def test_the_contact_score_peaks_on_the_last_frame_reached_by_motion():
    from avgen_timing.motion import contact_score

    energy = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0])  # motion into frames 2, 3, 4; still from frame 5
    score = contact_score(energy, before=3)
    # by hand: score(t) = mean(energy[t-2..t]) - energy[t+1]
    expected = torch.tensor([0.0, 0.0, 1 / 3 - 1, 2 / 3 - 1, 1.0, 2 / 3, 1 / 3, 0.0]).clamp_min(0)
    assert torch.allclose(score, expected, atol=1e-6) and int(score.argmax()) == 4


def test_every_contact_of_a_rendered_video_is_found_within_one_frame(tmp_path):
    video = render_video(tmp_path / "block.mp4")
    detector = avgen.create("detector", "motion_contacts")
    events = detector.detect(media.read_frames(video, detector.fps, detector.input_size))
    frames = (events[:, 0] * FPS).round().long()
    for contact in CONTACTS:
        assert (frames - round(contact * FPS)).abs().min() <= 1, (contact, frames)
    strongest = frames[events[:, 1].argsort(descending=True)[: len(CONTACTS)]]
    assert sorted(round(c * FPS) for c in CONTACTS) == pytest.approx(sorted(strongest.tolist()), abs=1)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A small synthetic dataset (3 videos of 10 s) written by the CLI entry point in this process (its output is in
    the test's captured setup output), and the env of the CLI runs."""
    from avgen._core.cli import main

    base = tmp_path_factory.mktemp("synth")
    env = {"AVGEN_HOME": str(base / "home")}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AVGEN_HOME", env["AVGEN_HOME"])
        try:
            main(["data", "synth", str(base / "synth"), "--videos", "3", "--classes", "3"])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
    assert code == 0
    return base / "synth", env


def test_timing_eval_counts_like_an_optimal_assignment(synth, capsys, monkeypatch):
    """`avgen timing eval` on a small synthetic set against a maximum matching computed here (scipy)."""
    root, env = synth
    monkeypatch.setenv("AVGEN_HOME", env["AVGEN_HOME"])
    code, out, lines = avgen_in_process(capsys, "timing", "eval", str(root), "--split", "train", "--json")
    assert code == 0, lines
    result = json.loads(out)

    detector = avgen.create("detector", "motion_contacts")
    matched = detected = annotated = 0
    for vid in (root / "train.txt").read_text().split():
        events = detector.detect(media.read_frames(root / f"{vid}_denoised.mp4", detector.fps, detector.input_size))
        found = np.round(events[:, 0].numpy() * FPS)
        truth = np.round(np.loadtxt(root / f"{vid}_times.txt", usecols=0, ndmin=1) * FPS)
        close = np.abs(found[:, None] - truth[None, :]) <= 1
        rows, cols = linear_sum_assignment(-close.astype(float))
        matched += int(close[rows, cols].sum())
        detected, annotated = detected + len(found), annotated + len(truth)
    assert (result["matched"], result["detected"], result["annotated"]) == (matched, detected, annotated)
    assert result["precision"] == pytest.approx(matched / detected, abs=1e-4)
    assert result["recall"] == pytest.approx(matched / annotated, abs=1e-4)


def test_timing_eval_on_a_folder_without_split_files_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AVGEN_HOME", str(tmp_path / "home"))
    code, _, lines = avgen_in_process(capsys, "timing", "eval", str(tmp_path))
    assert code == 2 and len(lines) == 1, lines
    assert "test.txt" in lines[0]


def test_the_learned_head_fits_the_annotated_contacts_better_than_motion_alone(synth, tmp_path, capsys, monkeypatch):
    root, env = synth
    head = tmp_path / "head.safetensors"
    # the real `python -m avgen timing fit` in a subprocess (the timing commands' one check in a separate process)
    fit = run_avgen("timing", "fit", str(root), "-o", str(head), "--epochs", "200", env=env)
    assert fit.returncode == 0 and head.is_file(), fit.stderr
    scores = {}
    monkeypatch.setenv("AVGEN_HOME", env["AVGEN_HOME"])
    for name, extra in (("motion_contacts", []), ("learned_contacts", ["--param", f"weights={head}"])):
        code, out, lines = avgen_in_process(capsys, "timing", "eval", str(root), "--split", "train", "--detector", name,
                                            *extra, "--json")  # in this process: the real fit ran above
        assert code == 0, lines
        scores[name] = json.loads(out)
    # on the videos it was trained on (a check that training works; held-out numbers are in docs/timing.md)
    assert scores["learned_contacts"]["f1"] > max(0.8, scores["motion_contacts"]["f1"]), scores


def test_learned_contacts_without_a_trained_head_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    avgen.write_video(tmp_path / "v_denoised.mp4", np.stack([scene((0, 0), k) for k in range(10)]), 30)
    (tmp_path / "v_times.txt").write_text("0.1 wood hit static\n")
    (tmp_path / "test.txt").write_text("v\n")  # a Greatest-Hits-layout folder: the head is needed to detect
    monkeypatch.setenv("AVGEN_HOME", str(tmp_path / "home"))
    code, _, lines = avgen_in_process(capsys, "timing", "eval", str(tmp_path), "--detector", "learned_contacts")
    assert code == 2 and len(lines) == 1, lines
    assert "avgen timing fit" in lines[0]


@pytest.mark.parametrize("fps", [30.0, 24.0])
def test_chunks_read_the_video_once_and_give_the_frames_a_fresh_read_of_each_window_gives(tmp_path, monkeypatch, fps):
    """A video read in chunks with margins through one reader: every chunk's frames equal read_frames of its
    window (the chunk's lo and length), the kept overlap included; the chunks own the whole video once."""
    import numpy as np

    import avgen_timing.chunks as chunked
    from avgen import probe, read_frames, write_video

    monkeypatch.setattr(chunked, "CHUNK", 2.0)
    monkeypatch.setattr(chunked, "MARGIN", 0.5)
    count = 7 * 25 + 3  # 7.12 s at 25 fps, read at another rate (30) and at one it divides less evenly (24)
    levels = (np.arange(count) * 37 % 251).astype(np.uint8)  # every frame its own brightness
    frames = np.broadcast_to(levels[:, None, None, None], (count, 32, 32, 3)).copy()
    video = write_video(tmp_path / "v.mp4", frames, 25)
    duration = float(probe(video).duration)

    class Detector:
        input_size = 32

    Detector.fps = fps
    seen = list(chunked.chunks(Detector(), video, duration))
    assert [start for start, _, _ in seen] == [0.0, 2.0, 4.0, 6.0]
    for start, lo, got in seen:
        hi = min(duration, start + 2.0 + 0.5)
        expected = read_frames(video, fps, 32, start=lo, duration=max(hi - lo, 1 / fps))
        assert abs(lo - max(0.0, start - 0.5)) < 1 / fps and torch.equal(got, expected), (start, lo)
    owned = np.concatenate([np.arange(round(lo * fps), round(lo * fps) + len(f))[
        chunked.owned(np.arange(round(lo * fps), round(lo * fps) + len(f)) / fps, start)] for start, lo, f in seen])
    assert np.array_equal(owned, np.arange(len(owned))) and len(owned) >= round(duration * fps) - 1


@pytest.fixture(scope="module")
def plain_samples(synth):
    """learned_contacts' samples of the synthetic videos, computed directly (no cache), with their files' times."""
    from avgen_timing.learned import video_samples

    return video_samples(sorted(synth[0].glob("*_denoised.mp4")))


def test_a_fit_through_the_shared_cache_gives_the_head_fitted_directly(synth, plain_samples, tmp_path, monkeypatch):
    """learned_contacts' fit reads each video's samples through the cache (one file per video, made by whichever
    process claims it): the head is the one fitted on the samples computed here directly."""
    from safetensors.torch import load_file

    from avgen_timing.learned import fit_head

    root, _ = synth
    monkeypatch.setenv("AVGEN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("AVGEN_CACHE", raising=False)
    videos = sorted(root.glob("*_denoised.mp4"))
    avgen.create("detector", "learned_contacts", weights="none").fit(videos, tmp_path)
    direct = fit_head([(f, y) for f, y, _ in plain_samples.values()])
    fitted = load_file(str(tmp_path / "detector.safetensors"))
    assert fitted.keys() == direct.state_dict().keys()
    assert all(torch.equal(fitted[k], v) for k, v in direct.state_dict().items())
    cached = avgen.cache_dir() / "timing"
    assert len(list((cached / "samples").glob("*.safetensors"))) == len(videos) == 3
    assert not list(cached.rglob("*.lock"))


def test_the_contact_times_a_dataset_annotates_are_what_a_recipe_detector_learns_from(synth, plain_samples, tmp_path,
                                                                                    monkeypatch):
    """A dataset plugin with its own annotations (Dataset.contact_times) gives the detector its labels, ahead of a
    times file beside the video and of the video's own sound; detector.json says how many videos it annotated."""
    from types import SimpleNamespace

    from rich.console import Console
    from safetensors.torch import load_file

    from avgen._core.events import fit_detector
    from avgen_timing.learned import SETTINGS, fit_head, labels_for

    root, _ = synth
    monkeypatch.setenv("AVGEN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("AVGEN_CACHE", raising=False)
    videos = sorted(root.glob("*_denoised.mp4"))
    given = {video: [0.6 + 1.3 * k for k in range(7)] for video in videos[:2]}  # not the files' times

    class Annotated(avgen.Dataset):
        class_names, sample_rate, clip_seconds = ["a"], 22050, 0.5

        def clips(self, split):
            return [avgen.Clip(id=v.stem, label=0, video=v, audio=v, start=1.0, duration=0.5) for v in videos]

        def load_frames(self, clip, fps, size):
            raise NotImplementedError

        def load_audio(self, clip):
            raise NotImplementedError

        def contact_times(self, video):
            return given.get(video)

    recipe = SimpleNamespace(detector=SimpleNamespace(name="learned_contacts", params={}), encoder=None)
    info = fit_detector(recipe, Annotated(), tmp_path, Console(file=None, quiet=True))
    assert info["annotated_by_the_dataset"] == 2 and info["videos"] == 3
    spec = json.loads((tmp_path / "detector.json").read_text())
    assert spec["trained_on"] == {"videos": 3, "annotated_by_the_dataset": 2}

    # expected: the same frames' features, labelled at the dataset's times where it gives them, else at the file's
    expected = [(f, labels_for(given[v], len(f), SETTINGS["fps"]) if v in given else y) for v, (f, y, _) in plain_samples.items()]
    assert not torch.equal(expected[0][1], plain_samples[videos[0]][1])  # the dataset's times are not the file's
    direct = fit_head(expected)
    fitted = load_file(str(tmp_path / "detector.safetensors"))
    assert all(torch.equal(fitted[k], v) for k, v in direct.state_dict().items())
