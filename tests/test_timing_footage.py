"""Timing on footage that carries its own sound, no annotation: `avgen timing fit` labels contacts with the
soundtrack's onsets, `avgen timing sync` scores any video against its own sound, and a run that keeps a fitted
detector generates one sound per contact (events), silence elsewhere.

The videos are rendered here (tests/test_timing_sync.py's falling block filmed by a shaking camera, with a
clack at each contact) and muxed into real mp4 files with their sound.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch

import avgen
from avgen._core import media
from conftest import avgen_in_process
from test_timing_sync import CONTACTS, FPS, RATE, render_video, soundtrack

pytestmark = pytest.mark.usefixtures("one_thread", "avgen_home")


def with_sound(video: Path, out: Path, shift: float = 0.0) -> Path:
    """``video`` with the clacks at each contact (+ shift s) as its own audio track."""
    wav = out.with_suffix(".wav")
    sf.write(wav, soundtrack(shift).numpy(), RATE)
    avgen.mux_audio(video, wav, out)
    wav.unlink()
    return out


@pytest.fixture(scope="module")
def footage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of three videos with their own sound (in a sub-folder, as a user's footage may be)."""
    root = tmp_path_factory.mktemp("footage")
    silent = render_video(root / "silent.mp4")
    (root / "takes").mkdir()
    for name in ("a", "b", "c"):
        with_sound(silent, root / "takes" / f"{name}.mp4")
    silent.unlink()
    return root / "takes"


def test_the_soundtrack_onsets_are_the_contacts(footage):
    from avgen_timing.footage import contact_times

    times, source = contact_times(footage / "a.mp4")
    assert source == "audio"
    assert len(times) == len(CONTACTS)
    assert np.abs(times - np.array(CONTACTS)).max() <= 0.5 / FPS  # within half a frame of where the clacks start


def test_fit_on_a_folder_without_annotations_then_sync_scores_the_fitted_head(footage, tmp_path, capsys):
    head = tmp_path / "head.safetensors"
    code, out, err = avgen_in_process(capsys, "timing", "fit", str(footage), "-o", str(head), "--epochs", "200")
    assert code == 0, err
    assert f"head trained on 3 videos ({3 * len(CONTACTS)} contacts from audio times)" in out
    report = tmp_path / "sync.json"
    code, out, err = avgen_in_process(capsys, "timing", "sync", str(footage), "--detector", "learned_contacts",
                                      "--param", f"weights={head}", "-o", str(report))
    assert code == 0, err
    result = json.loads(report.read_text())
    assert result["summary"]["videos"] == 3 and result["summary"]["onsets"] == 3 * len(CONTACTS)
    assert result["summary"]["f1"] >= 0.9  # fitted on these very videos: each contact found within 100 ms
    assert result["summary"]["within_one_frame"] == 1.0  # the sound is in sync with the picture
    assert "3 videos: precision" in out


@pytest.mark.parametrize("shift", [-0.2, 0.1])
def test_sync_measures_a_known_shift_of_the_sound(footage, tmp_path, capsys, shift):
    shifted = tmp_path / "shifted"
    shifted.mkdir()
    with_sound(footage / "a.mp4", shifted / "late.mp4", shift)  # the audio track replaced
    code, out, err = avgen_in_process(capsys, "timing", "sync", str(shifted), "--json")
    assert code == 0, err
    row = json.loads(out)["videos"][0]
    assert abs(row["offset_ms"] / 1000 - shift) <= 1 / FPS  # motion_contacts, no training: within one frame


def test_sync_gives_no_offset_for_sound_that_has_nothing_to_do_with_the_picture(footage, tmp_path, capsys):
    """Clacks at times unrelated to the contacts: some lag is always the best, but it does not stand out from the
    same sound moved out of line with the picture, so the offset is '?' (null), not a number."""
    from test_timing_sync import SECONDS, clack

    unrelated = tmp_path / "unrelated"
    unrelated.mkdir()
    wave = np.random.default_rng(2).normal(0, 0.002, int(SECONDS * RATE))
    for start in np.random.default_rng(5).uniform(0.2, SECONDS - 0.5, len(CONTACTS)):
        piece = clack()[: wave.size - round(start * RATE)]
        wave[round(start * RATE):round(start * RATE) + piece.size] += piece
    sf.write(tmp_path / "unrelated.wav", wave, RATE)
    avgen.mux_audio(footage / "a.mp4", tmp_path / "unrelated.wav", unrelated / "a.mp4")
    code, out, err = avgen_in_process(capsys, "timing", "sync", str(unrelated), "--json")
    assert code == 0, err
    result = json.loads(out)
    row = result["videos"][0]
    assert row["offset_stands_out"] is False and row["offset_ms"] is None and row["offset_best_lag_ms"] is not None
    assert result["summary"]["offsets_undetermined"] == 1 and result["summary"]["within_one_frame"] is None
    code, out, err = avgen_in_process(capsys, "timing", "sync", str(unrelated))
    assert code == 0 and "offset undetermined (?) for 1" in out, out


def test_sync_against_a_reference_scores_one_soundtrack_against_another(footage, tmp_path, capsys):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    with_sound(footage / "a.mp4", outputs / "a.avgen.mp4", 0.05)  # 50 ms late: matched within 100 ms
    code, out, err = avgen_in_process(capsys, "timing", "sync", str(outputs), "--reference", str(footage), "--json")
    assert code == 0, err
    row = json.loads(out)["videos"][0]
    assert row["reference"] == str(footage / "a.mp4")
    assert (row["precision"], row["recall"]) == (1.0, 1.0)
    assert abs(row["mean_abs_error_ms"] - 50) <= 25
    code, out, err = avgen_in_process(capsys, "timing", "sync", str(outputs), "--reference", str(footage),
                                      "--json", "--tolerance", "0.02")
    assert json.loads(out)["summary"]["f1"] == 0.0  # 50 ms is outside +-20 ms
    code, out, err = avgen_in_process(capsys, "timing", "sync", str(outputs), "--reference", str(footage))
    assert code == 0 and "(soundtrack onsets against the reference's; offsets by motion_contacts)" in out, out


def test_sync_plot_draws_each_video_with_its_matches_green_and_its_misses_red(footage, tmp_path, capsys):
    from matplotlib.image import imread

    late = tmp_path / "late"
    late.mkdir()
    with_sound(footage / "a.mp4", late / "a.mp4", 0.3)  # another a.mp4: its onsets 0.3 s after the contacts
    figures = tmp_path / "figures"
    code, out, err = avgen_in_process(capsys, "timing", "sync", str(footage / "a.mp4"), str(late / "a.mp4"),
                                      "--plot", str(figures), "--json")
    assert code == 0, err
    rows = json.loads(out)["videos"]
    assert [Path(r["figure"]).name for r in rows] == ["a.mp4.sync.png", "a.mp4.2.sync.png"]  # same name: numbered
    assert sorted(p.name for p in figures.iterdir()) == ["a.mp4.2.sync.png", "a.mp4.sync.png"]

    def markers(path: str) -> tuple[int, int]:
        """Pixels of matplotlib's tab:green and tab:red (the matched and the unmatched markers)."""
        rgb = (imread(path)[..., :3] * 255).round().astype(int)
        near = lambda colour: int((np.abs(rgb - np.array(colour)).sum(-1) < 30).sum())  # noqa: E731
        return near((44, 160, 44)), near((214, 39, 40))

    assert rows[0]["matched"] > 0 and markers(rows[0]["figure"])[0] > 0  # matched contacts and onsets drawn green
    code, out, err = avgen_in_process(capsys, "timing", "sync", str(late / "a.mp4"), "--tolerance", "0.001",
                                      "--plot", str(tmp_path / "strict"), "--json")
    row = json.loads(out)["videos"][0]
    green, red = markers(row["figure"])
    assert row["matched"] == 0 and green == 0 and red > 0  # nothing within 1 ms: every marker red


def test_leave_one_out_fits_on_the_other_videos(footage, capsys):
    code, out, err = avgen_in_process(capsys, "timing", "sync", str(footage), "--detector", "learned_contacts",
                                      "--leave-one-out", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["leave_one_out"] and result["summary"]["f1"] >= 0.8


def test_bad_input_is_one_line_and_exit_2(footage, tmp_path, capsys):
    silent = render_video(tmp_path / "mute.mp4")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (("timing", "fit", str(silent)), "has no sound track"),
        (("timing", "sync", str(silent)), "has no sound track"),
        (("timing", "fit", str(empty)), "folder holds no videos"),
        (("timing", "sync", str(tmp_path / "nothing")), "no such file or folder"),
        (("timing", "sync", str(footage), "--leave-one-out"), "add --detector learned_contacts"),
        (("timing", "sync", str(footage), "--reference", str(empty)), "no video named"),
        (("timing", "sync", str(footage), "--plot", str(silent)), "exists and is not a folder"),
        (("timing", "fit"), "give a folder of videos with sound"),
        (("timing", "fit", str(footage), "--run", str(tmp_path)), "not a run directory"),
        (("timing", "fit", "--run", str(tmp_path)), "not a run directory"),
    ]
    for args, expected in cases:
        code, out, err = avgen_in_process(capsys, *args)
        assert code == 2, (args, err)
        assert len(err) == 1 and expected in err[0], (args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "mute.mp4"]  # nothing written
    from avgen._core import cli  # the raw stderr: the error is its first line (no progress bar's blank line first)

    for args in (("timing", "sync", str(empty)), ("timing", "eval", str(empty))):
        capsys.readouterr()
        with pytest.raises(SystemExit):
            cli.main(list(args))
        assert capsys.readouterr().err.startswith("error: "), args


def test_timing_fit_keeps_a_head_in_a_run_and_generate_then_places_one_sound_per_contact(tiny_run, tmp_path, capsys):
    """`timing fit --run` keeps the head in the run; `generate` then defaults to events: a sound at each contact
    found, silence before the first; --mode windows gives the sliding windows back."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    data = tiny_run.parents[1] / "data"
    code, out, err = avgen_in_process(capsys, "timing", "fit", "--run", str(run))
    assert code == 0, err
    spec = json.loads((run / "detector.json").read_text())
    assert spec["detector"] == "learned_contacts" and (run / spec["params"]["weights"]).is_file()

    video = sorted(data.glob("*_denoised.mp4"))[0]
    events_wav, windows_wav = tmp_path / "events.wav", tmp_path / "windows.wav"
    code, _, err = avgen_in_process(capsys, "generate", str(video), "--run", str(run), "-o", str(events_wav))
    assert code == 0, err
    assert any(" contacts: " in line for line in err), err  # contacts found, as the batch table calls them
    code, _, err = avgen_in_process(capsys, "generate", str(video), "--run", str(run), "-o", str(windows_wav),
                                    "--mode", "windows")
    assert code == 0, err
    events, rate = sf.read(events_wav)
    windows, _ = sf.read(windows_wav)
    assert events.shape == windows.shape

    from avgen_timing.footage import annotated_times, times_file
    from avgen_timing.learned import LearnedContacts, LearnedContactsParams

    detector = LearnedContacts(LearnedContactsParams(weights=str(run / "detector.safetensors")))
    found = detector.detect(media.read_frames(video, detector.fps, detector.input_size))[:, 0].numpy()
    assert found.size > 0
    first = int(round(found.min() * rate))  # silence before the first contact, sound from it on
    assert np.abs(events[: max(first - int(0.02 * rate), 0)]).max(initial=0.0) == 0.0
    assert np.abs(events[first:]).max() > 0
    truth = np.array(annotated_times(times_file(video)))  # fitted on this run's training videos
    assert min(np.abs(truth - t).min() for t in found) <= 0.1

    # the same video cut without re-encoding, so that its clock starts at 1.5 s: the sound still lands on the contacts
    late = tmp_path / "late.mp4"
    with av.open(str(video)) as source, av.open(str(late), "w", format="mp4") as target:
        streams = {s.index: target.add_stream_from_template(s) for s in source.streams if s.type in ("video", "audio")}
        for packet in source.demux(*(source.streams[i] for i in streams)):
            if packet.dts is None:
                continue
            shift = round(1.5 / packet.time_base)
            packet.pts, packet.dts = packet.pts + shift, packet.dts + shift
            packet.stream = streams[packet.stream.index]
            target.mux(packet)
    code, _, err = avgen_in_process(capsys, "generate", str(late), "--run", str(run), "-o", str(tmp_path / "late_out.mp4"))
    assert code == 0, err
    with av.open(str(tmp_path / "late_out.mp4")) as out:
        picture = next(out.decode(video=0)).time
    with av.open(str(tmp_path / "late_out.mp4")) as out:
        heard = next(f.time + np.flatnonzero(np.abs(f.to_ndarray()).max(axis=0) > 1e-3)[0] / f.sample_rate
                     for f in out.decode(audio=0) if np.abs(f.to_ndarray()).max() > 1e-3)
    assert picture == pytest.approx(1.5, abs=0.05)
    assert heard - picture == pytest.approx(found.min(), abs=0.05)  # the first sound on the first contact, as played
    placed = [c["time"] for c in json.loads((tmp_path / "late_out.json").read_text())["contacts"]]
    assert placed == pytest.approx(sorted(found.tolist()), abs=1e-3)  # every contact, at its time, to the video's end

    still = avgen.write_video(tmp_path / "still.mp4", np.full((60, 64, 64, 3), 90, dtype=np.uint8), 30)
    code, _, err = avgen_in_process(capsys, "generate", str(still), "--run", str(run), "-o", str(tmp_path / "still.wav"))
    assert code == 0, err
    assert np.abs(sf.read(tmp_path / "still.wav")[0]).max() == 0  # nothing happens: a silent track, no error


def unlike_video(path: Path) -> Path:
    """Two seconds of a green picture with a red square moving across it: nothing like the rendered hits."""
    frames = np.zeros((60, 64, 64, 3), dtype=np.uint8)
    frames[..., 1] = 230
    for t in range(60):
        frames[t, 24:36, t % 52:(t % 52) + 12] = (230, 0, 0)
    return avgen.write_video(path, frames, 30)


def test_similarity_is_the_median_over_frames_of_the_nearest_cosine():
    from avgen._core.events import similarity

    frames = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    reference = np.array([[1.0, 0.0], [0.6, 0.8]])
    nearest = [max(f @ r / np.linalg.norm(f) / np.linalg.norm(r) for r in reference) for f in frames]  # 1, .8, .98995
    assert similarity(torch.tensor(frames), torch.tensor(reference)) == pytest.approx(float(np.median(nearest)), abs=1e-6)


def test_the_familiar_reference_keeps_spaced_unit_rows_and_the_validation_level(tmp_path):
    from safetensors.torch import load_file

    from avgen._core.events import familiar_reference

    g = torch.Generator().manual_seed(0)
    train, val = torch.randn(30, 4, 8, generator=g), torch.randn(21, 4, 8, generator=g)
    spec = familiar_reference(tmp_path, train, val)
    reference = load_file(str(tmp_path / spec["file"]))["reference"].float()
    rows = train.reshape(-1, 8)
    assert reference.shape == (120, 8)  # fewer training frames than the cap: all of them
    assert torch.allclose(reference, rows / rows.norm(dim=1, keepdim=True), atol=2e-3)  # stored in half precision
    sims = []
    for clip in val.numpy():  # by hand: per validation clip the median of each frame's best cosine
        cos = (clip / np.linalg.norm(clip, axis=1, keepdims=True)) @ (rows / rows.norm(dim=1, keepdim=True)).numpy().T
        sims.append(np.median(cos.max(1)))
    assert spec["level"] == pytest.approx(float(np.quantile(sims, 0.05)), abs=2e-3)
    assert familiar_reference(tmp_path, train, val[:0]) is None  # no validation clips: no reference


def test_a_recipe_detector_is_fitted_in_the_run_and_travels_with_the_export(tmp_path, capsys, monkeypatch):
    """[detector] in a recipe: the fit stage fits it on the training videos and keeps it (detector.json);
    `generate` then defaults to events, av_sync ('auto') measures against it, and the exported folder carries it."""
    from conftest import TINY_RECIPE

    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "events.toml"
    recipe.write_text(TINY_RECIPE.format(root="data") + '\n[detector]\nname = "learned_contacts"\n'
                      + '\n[[metric]]\nname = "av_sync"\ntimeline_clips = 0\n')
    code, _, err = avgen_in_process(capsys, "run", str(recipe), "--out", "runs")
    assert code == 0, err[-20:]
    run = tmp_path / "runs" / "tiny"
    spec = json.loads((run / "detector.json").read_text())
    assert spec["detector"] == "learned_contacts" and (run / spec["params"]["weights"]).is_file()
    stages = json.loads((run / "stages.json").read_text())
    familiar = spec["familiar"]  # what the training videos look like: the detector is used on videos like them
    assert (run / familiar["file"]).is_file() and 0 < familiar["level"] <= 1 and familiar["share"] == 0.75
    assert stages["stages"]["fit"]["detector"] == {"name": "learned_contacts", "videos": 4,
                                                   "familiar_level": familiar["level"]}
    assert "av_sync" in json.loads((run / "metrics.json").read_text())
    assert any("detector: fitting learned_contacts on 4 training videos" in line for line in err)

    video = sorted((tmp_path / "data").glob("*_denoised.mp4"))[0]
    code, _, err = avgen_in_process(capsys, "generate", str(video), "--run", str(run), "-o", str(tmp_path / "out"))
    assert code == 0, err
    summary = json.loads((tmp_path / "out" / f"{video.stem}.avgen.json").read_text())
    assert summary["mode"] == "events" and summary["detector"].startswith("learned_contacts")
    assert summary["onsets"] == len(summary["contacts"])
    assert summary["familiarity"] >= summary["familiar_threshold"]  # a training video is like the training videos

    unlike = unlike_video(tmp_path / "unlike.mp4")
    code, _, err = avgen_in_process(capsys, "generate", str(unlike), "--run", str(run), "-o", str(tmp_path / "out"))
    assert code == 0, err
    other = json.loads((tmp_path / "out" / "unlike.avgen.json").read_text())
    assert other["familiarity"] < other["familiar_threshold"]
    assert other["mode"] == "events" and other["detector"].startswith("region_contacts (the video is unlike")
    assert any(f"note: {unlike}: contacts by region_contacts (the video is unlike" in line for line in err)  # said

    model_dir = tmp_path / "model"
    code, _, err = avgen_in_process(capsys, "export", str(run), str(model_dir))
    assert code == 0, err
    assert json.loads((model_dir / "detector.json").read_text())["params"]["weights"] == "detector.safetensors"
    assert "detector" in json.loads((model_dir / "config.json").read_text())["components"]
    card = (model_dir / "README.md").read_text()  # the card says how this model makes sound: one per contact
    assert "detector and generates one sound of" in card and "--mode windows" in card and "watches" not in card
    code, _, err = avgen_in_process(capsys, "generate", str(video), "--model", str(model_dir), "-o",
                                    str(tmp_path / "from_model"))
    assert code == 0, err
    again = json.loads((tmp_path / "from_model" / f"{video.stem}.avgen.json").read_text())
    assert again["contacts"] == summary["contacts"]  # the same detector, the same contacts
    assert again["familiarity"] == summary["familiarity"] and (model_dir / familiar["file"]).is_file()
    _, summary_of_unlike = avgen.load(model_dir).events(unlike)  # the exported folder decides as the run does
    assert summary_of_unlike["detector"] == other["detector"]
    assert np.allclose(sf.read(tmp_path / "from_model" / f"{video.stem}.avgen.wav")[0],
                       sf.read(tmp_path / "out" / f"{video.stem}.avgen.wav")[0], atol=1e-4)
