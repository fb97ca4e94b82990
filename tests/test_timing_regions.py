"""region_contacts: peaks of the most-moving region's motion, frames the reader repeated skipped, and a head fitted
on footage with sound where cross-validation says it is better.

The videos are drawn here: a ball bouncing on a textured floor (falling under gravity, so it is
fastest at each contact; contacts exactly on frames) filmed by a shaking camera with sensor noise,
encoded to real mp4 files; the same ball filmed at 24 fps (read at 30, every fifth frame is a
repeat); and tests/test_timing_sync.py's falling block with a clack at each contact.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import avgen
from avgen._core import media
from conftest import avgen_in_process
from test_timing_sync import CONTACTS, RATE, render_video, soundtrack

pytestmark = pytest.mark.usefixtures("one_thread", "avgen_home")

SIZE = 128
BOUNCES = [0.8, 1.6, 2.3, 2.9, 3.4, 3.8]  # seconds: the gaps shrink as a bouncing ball loses energy
GRAVITY = 900.0  # px / s^2


def height(t: float) -> float:
    """Pixels above the floor at time t: dropped from rest 0.4 s before the first contact, then a parabola under
    gravity between contacts (the ball rests after the last)."""
    if t <= BOUNCES[0]:
        return 0.5 * GRAVITY * (0.4 ** 2 - max(t - BOUNCES[0] + 0.4, 0.0) ** 2)
    for a, b in zip(BOUNCES, BOUNCES[1:]):
        if a <= t <= b:
            return 0.5 * GRAVITY * (t - a) * (b - t)
    return 0.0


def render_ball(path: Path, fps: float, seconds: float = 4.2, shake: int = 2, ball: bool = True) -> Path:
    """The ball (radius 9 px) over a smooth texture, the camera moved by up to ``shake`` px every frame (so up to
    2 ``shake`` between two frames: within the 4 px the detector compensates)."""
    rng = np.random.default_rng(0)
    grain = torch.nn.functional.avg_pool2d(torch.from_numpy(rng.standard_normal((1, SIZE + 12, SIZE + 12))), 5, 1)[0]
    floor = (128 + 120 * grain.numpy()).clip(0, 255)
    yy, xx = np.mgrid[0:SIZE + 8, 0:SIZE + 8]
    frames = []
    for k in range(round(seconds * fps)):
        scene = floor.copy()
        if ball:
            cy = 4 + 110 - 9 - min(height(k / fps), 95.0)
            scene[(yy - cy) ** 2 + (xx - 68) ** 2 <= 81] = 25.0
        dy, dx = rng.integers(-shake, shake + 1, 2) if shake else (0, 0)
        image = scene[4 + dy:4 + dy + SIZE, 4 + dx:4 + dx + SIZE] + rng.normal(0, 3, (SIZE, SIZE))
        frames.append(np.repeat(image.clip(0, 255).astype(np.uint8)[..., None], 3, axis=2))
    return avgen.write_video(path, np.stack(frames), fps)


def found_times(detector, video: Path) -> np.ndarray:
    return detector.detect(media.read_frames(video, detector.fps, detector.input_size))[:, 0].double().numpy()


def test_every_bounce_is_found_within_one_frame_and_the_shaking_camera_adds_none(tmp_path):
    video = render_ball(tmp_path / "ball.mp4", 30)
    found = found_times(avgen.create("detector", "region_contacts"), video)
    assert len(found) == len(BOUNCES), found
    assert np.abs(found - np.array(BOUNCES)).max() <= 1 / 30 + 1e-6, found


def test_frames_the_reader_repeats_make_no_contact(tmp_path):
    """A 24 fps video read at 30 fps repeats every fifth frame: skipped, the contacts are the same and no more."""
    video = render_ball(tmp_path / "ball24.mp4", 24)
    frames = media.read_frames(video, 30, SIZE)
    from avgen_timing.regions import distinct_frames

    assert int((~distinct_frames(frames)).sum()) == pytest.approx(frames.shape[0] / 5, abs=2)
    found = found_times(avgen.create("detector", "region_contacts"), video)
    assert len(found) == len(BOUNCES), found
    # each within two frames at 30 fps (1.6 of the video's own): the ball moves 11 px per frame of the 24 fps video
    # into the two frames before a contact, and either may change its region most
    assert np.abs(found - np.array(BOUNCES)).max() <= 2 / 30 + 1e-6, found


def test_repeats_take_the_values_of_the_frame_they_repeat():
    from avgen_timing.regions import distinct_frames, frame_gaps, spread

    frames = torch.zeros(6, 2, 2, 3, dtype=torch.uint8)
    for k, v in enumerate([0, 1, 1, 2, 3, 3]):
        frames[k] = v
    keep = distinct_frames(frames)
    assert keep.tolist() == [True, True, False, True, True, False]
    assert frame_gaps(keep).tolist() == [1.0, 1.0, 2.0, 1.0]
    assert spread(torch.tensor([10, 11, 12, 13]), keep).tolist() == [10, 11, 11, 12, 13, 13]


def test_camera_shake_is_compensated_and_a_moving_object_is_not():
    from avgen_timing.regions import SETTINGS, frame_statistics
    from test_timing_detector import scene

    shaken = torch.from_numpy(np.stack([scene(s, 20) for s in [(0, 0), (2, -1), (-1, 2), (1, 3), (0, -1)]]))
    moving = torch.from_numpy(np.stack([scene((0, 0), 10 + 6 * k) for k in range(5)]))
    still, _ = frame_statistics(shaken, SETTINGS, vectors=False)
    moved, _ = frame_statistics(moving, SETTINGS, vectors=False)
    assert still[1:].max() < 0.1 * moved[1:].min(), (still, moved)


def test_a_still_video_has_no_contact(tmp_path):
    video = render_ball(tmp_path / "still.mp4", 30, seconds=2.0, shake=0, ball=False)
    assert len(found_times(avgen.create("detector", "region_contacts"), video)) == 0


def test_motion_vectors_see_a_square_move_and_stop():
    """Block matching: the square's blocks move 3 px a frame, then stop; the velocity change peaks where it stops."""
    from avgen_timing.regions import FEATURES, SETTINGS, frame_statistics
    from test_timing_detector import scene

    rows = [10 + 3 * min(k, 6) for k in range(10)]  # moves into frames 1..6, rests from frame 6
    noise = np.random.default_rng(0).integers(0, 2, (10, 128, 128, 1))  # so that no frame repeats the one before
    frames = torch.from_numpy(np.stack([scene((0, 0), r, size=128) for r in rows]) + noise.astype(np.uint8))
    _, per_frame = frame_statistics(frames, SETTINGS)
    speed = per_frame[:, FEATURES.index("speed")].exp()
    change = per_frame[:, FEATURES.index("velocity_change")].exp()
    assert speed[1:7].min() > 1.5 and speed[7:].max() < 0.5, speed  # partly covered blocks move less
    assert int(change[1:].argmax()) + 1 == 6, change  # (frame 0 has no velocity into it)


def test_fit_keeps_the_head_only_where_it_cross_validates_better():
    """Made-up statistics: one column marks every contact exactly (the head learns it) while the prior is noise;
    then the same with the prior marking the contacts and the statistics noise. (Twelve videos: with fewer, a head
    on all the noise columns over +-6 frames fits the noise of its few training contacts.)"""
    from avgen_timing.regions import FEATURES, fit_model

    rng = np.random.default_rng(0)
    samples, swapped = {}, {}
    for i in range(12):
        times = np.sort(rng.choice(np.arange(15, 290, 30), 8, replace=False)) / 30  # 1 s apart or more
        marks = torch.zeros(300)
        marks[np.round(times * 30).astype(int)] = 1.0
        noise = torch.from_numpy(rng.random(300)).float()
        per_frame = torch.from_numpy(rng.standard_normal((300, len(FEATURES)))).float()
        samples[Path(f"v{i}")] = (noise, torch.cat([marks[:, None] * 5, per_frame[:, 1:]], 1), times, "audio")
        swapped[Path(f"v{i}")] = (marks + 0.01 * noise, per_frame, times, "audio")
    head = fit_model(samples, epochs=100)
    assert head.mode == "head" and head.report["head_cv_f1"] > 0.9 > head.report["prior_f1"], head.report
    prior = fit_model(swapped, epochs=100)
    assert prior.mode == "prior" and prior.report["prior_f1"] == 1.0, prior.report


@pytest.fixture(scope="module")
def footage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three copies of the falling block (it falls at constant speed: no motion peak at the contact) with a clack
    at each contact as their own sound."""
    root = tmp_path_factory.mktemp("region_footage")
    silent = render_video(root / "silent.mp4")
    wav = root / "clacks.wav"
    sf.write(wav, soundtrack(0.0).numpy(), RATE)
    for name in ("a", "b", "c"):
        avgen.mux_audio(silent, wav, root / f"{name}.mp4")
    silent.unlink()
    wav.unlink()
    return root


def test_fit_learns_a_stop_the_prior_cannot_see_and_sync_scores_it(footage, tmp_path, capsys):
    """The prior fires where the block starts to fall and to lift, not at the contact; fitted on the videos' own
    sound, the head wins the cross-validation and finds every contact within one frame."""
    prior = found_times(avgen.create("detector", "region_contacts"), footage / "a.mp4")
    assert min(np.abs(prior - c).min() for c in CONTACTS) > 1 / 30 + 1e-6, prior

    fitted = tmp_path / "region.safetensors"
    code, out, err = avgen_in_process(capsys, "timing", "fit", str(footage), "--detector", "region_contacts",
                                      "-o", str(fitted), "--epochs", "200")
    assert code == 0, err
    assert "region_contacts fitted on 3 videos" in out and "keeps the head" in out, out
    detector = avgen.create("detector", "region_contacts", weights=str(fitted))
    found = found_times(detector, footage / "b.mp4")
    assert len(found) == len(CONTACTS), found
    assert np.abs(found - np.array(CONTACTS)).max() <= 1 / 30 + 1e-6, found

    report = tmp_path / "sync.json"
    code, out, err = avgen_in_process(capsys, "timing", "sync", str(footage), "--detector", "region_contacts",
                                      "--leave-one-out", "-o", str(report))
    assert code == 0, err
    result = json.loads(report.read_text())
    assert result["leave_one_out"] and result["summary"]["videos"] == 3
    assert result["summary"]["f1"] >= 0.9, result["summary"]  # each video scored by a fit on the other two


def test_a_recipe_detector_fits_into_the_run_folder(footage, tmp_path):
    """Detector.fit (a recipe's [detector]): the fitted file in the folder, and the params that rebuild it there."""
    detector = avgen.create("detector", "region_contacts")
    params = detector.fit(sorted(footage.glob("*.mp4")), tmp_path)
    assert params == {"weights": "detector.safetensors"} and (tmp_path / "detector.safetensors").is_file()
    assert detector.fitted().mode == "head"
    report = detector.fitted().report  # the run's output says what was kept and why
    assert detector.fit_summary == (f"kept the learned head at threshold {detector.fitted().threshold:g} (cross-validated "
                                    f"F1 {report['head_cv_f1']:.3f} against the untrained prior's {report['prior_f1']:.3f})")
    rebuilt = avgen.get_component("detector", "region_contacts").build(params, avgen.BuildContext(run_dir=tmp_path))
    frames = media.read_frames(footage / "c.mp4", 30, SIZE)
    assert torch.equal(rebuilt.detect(frames), detector.detect(frames))


def test_a_file_that_is_not_a_fitted_region_detector_is_one_error(tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    save_file({"x": torch.zeros(1)}, str(bad))
    detector = avgen.create("detector", "region_contacts", weights=str(bad))
    with pytest.raises(avgen.AvgenError, match="unreadable"):
        detector.detect(torch.zeros(3, SIZE, SIZE, 3, dtype=torch.uint8))
    missing = avgen.create("detector", "region_contacts", weights=str(tmp_path / "none.safetensors"))
    with pytest.raises(avgen.AvgenError, match="timing fit"):
        missing.strength(torch.zeros(3, SIZE, SIZE, 3, dtype=torch.uint8))


def test_stop_statistics_tell_a_motion_that_stops_from_one_that_goes_on():
    """Hand-made region motion: a region moves into frames 1-3 and then nothing moves (a contact), or the same
    region goes on moving (no contact yet). Up to frame 3 the whole-frame statistics of the two are the same; the
    stop statistics are the region's own drop, by hand."""
    from avgen_timing.regions import SETTINGS, stop_statistics, top_minus_median

    blocks = 400  # 0.3 % of 400 regions: the one most-moving region
    stops, goes_on = torch.zeros(8, blocks), torch.zeros(8, blocks)
    for t, value in ((1, 0.2), (2, 0.5), (3, 0.8)):
        stops[t, 7] = goes_on[t, 7] = value
    goes_on[4:, 7] = 0.8
    assert torch.equal(top_minus_median(stops, SETTINGS["top"])[:4], top_minus_median(goes_on, SETTINGS["top"])[:4])
    stopped, going = stop_statistics(stops, SETTINGS["top"]), stop_statistics(goes_on, SETTINGS["top"])
    contact = torch.zeros(8)
    contact[3] = 0.8  # frame 3: 0.8 in, nothing after
    assert torch.allclose(stopped["stop_at_top"], contact) and torch.allclose(stopped["stop"], contact)
    assert torch.allclose(stopped["approach_stop"], contact * 0.5 / 0.8)  # min(0.5, 0.8) in, nothing after
    assert torch.allclose(stopped["stop_wide"], contact / 12)  # the 3 % of 400 regions: 12, one of them dropping
    last = torch.zeros(8)
    last[7] = 0.8  # after the last frame nothing moves
    for name in ("stop", "stop_at_top", "approach_stop"):
        assert torch.allclose(going[name], last), (name, going[name])


def test_a_head_fitted_before_the_stop_statistics_loads_and_reads_its_eleven(footage, tmp_path):
    """A file written before the four stop statistics existed names no statistics: its head reads the first eleven,
    as it was fitted; a head whose input size matches neither is one error naming the file."""
    from safetensors.torch import save_file

    from avgen_timing.learned import Head
    from avgen_timing.regions import FEATURES, FIRST_FEATURES, SETTINGS, frame_statistics, windowed

    torch.manual_seed(0)
    width = 2 * SETTINGS["window"] + 1
    head = Head(len(FIRST_FEATURES) * width)
    with torch.no_grad():
        head.mean.normal_()
        head.std.uniform_(0.5, 2.0)
    old = tmp_path / "old.safetensors"
    tensors = {"threshold": torch.tensor([0.5]), **{f"head.{k}": v.contiguous() for k, v in head.state_dict().items()}}
    save_file(tensors, str(old), metadata={"detector": "region_contacts", "mode": "head",
                                            "settings": json.dumps(SETTINGS), "trained_on": "{}", "report": "{}"})
    detector = avgen.create("detector", "region_contacts", weights=str(old))
    assert detector.fitted().features == FIRST_FEATURES and len(FEATURES) == len(FIRST_FEATURES) + 4
    frames = media.read_frames(footage / "a.mp4", 30, SIZE)
    _, per_frame = frame_statistics(frames, SETTINGS)
    with torch.no_grad():
        expected = torch.sigmoid(head.eval()(windowed(per_frame[:, :len(FIRST_FEATURES)], SETTINGS["window"])))
    assert torch.allclose(detector.strength(frames), expected)

    wrong = tmp_path / "wrong.safetensors"
    save_file(tensors, str(wrong), metadata={"detector": "region_contacts", "mode": "head",
                                              "features": json.dumps(list(FEATURES))})
    with pytest.raises(avgen.AvgenError, match=r"wrong.safetensors is unreadable .*143 inputs, not 15 statistics"):
        avgen.create("detector", "region_contacts", weights=str(wrong)).detect(frames)


def test_statistics_are_remembered_by_the_frames_content(monkeypatch):
    """The same frames (another tensor, equal content) are computed once; other content or settings again."""
    from avgen_timing import regions

    calls = []
    real = regions.frame_statistics

    def counted(frames, settings, vectors=True):
        calls.append(vectors)
        return real(frames, settings, vectors)

    monkeypatch.setattr(regions, "frame_statistics", counted)
    monkeypatch.setattr(regions, "_STATISTICS", {})
    frames = torch.randint(0, 255, (6, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    prior_only = regions.remembered_statistics(frames, regions.SETTINGS, vectors=False)
    assert prior_only[1] is None and calls == [False]
    first = regions.remembered_statistics(frames, regions.SETTINGS)  # the statistics were not computed: now they are
    again = regions.remembered_statistics(frames.clone(), regions.SETTINGS)
    assert calls == [False, True] and again is first
    assert regions.remembered_statistics(frames, regions.SETTINGS, vectors=False) is first
    changed = frames.clone()
    changed[3, 5, 5, 0] += 1
    regions.remembered_statistics(changed, regions.SETTINGS)
    regions.remembered_statistics(frames, {**regions.SETTINGS, "top": 0.01})
    assert calls == [False, True, True, True]
