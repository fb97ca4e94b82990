"""`avgen generate --onsets-out / --onsets`: detect contacts, edit the file, and the sound lands where the file says.

Onsets of the output are measured with librosa's onset detector (an implementation independent of
avgen's placement), at its hop of 512 samples.
"""

from __future__ import annotations

import json
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf

from conftest import avgen_in_process

HOP = 512  # librosa's onset hop (samples); the output's onset is measured to within one hop


@pytest.fixture
def timed_run(tiny_run: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(the shared tiny run, with av_sync among its metrics; a video of its dataset), its AVGEN_HOME set."""
    base = tiny_run.parents[1]
    monkeypatch.setenv("AVGEN_HOME", str(base / "home"))
    return tiny_run, base / "data" / "synth0000_denoised.mp4"


def test_the_sync_metric_is_in_metrics_json_and_the_report_with_its_timeline(timed_run):
    run, _ = timed_run
    sync = json.loads((run / "metrics.json").read_text())["av_sync"]
    for kind in ("real", "raw", "exemplar"):
        assert sync[f"sync_clips_{kind}"] >= 1 and 0 <= sync[f"sync_within_frame_{kind}"] <= 1
        assert 0 <= sync[f"sync_offset_ms_{kind}"] <= 500
    assert (run / "figures" / "timeline.png").read_bytes()[:4] == b"\x89PNG"
    assert "sync_offset_ms_real" in (run / "report.md").read_text() and "figures/timeline.png" in (run / "report.md").read_text()
    assert 'data-key="av_sync/sync_offset_ms_raw"' in (run / "report.html").read_text()


def test_every_shipped_recipe_measures_sync():
    from avgen._core.recipefiles import load_recipes
    for path in sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.toml")):
        for recipe in load_recipes(path):
            assert "av_sync" in [m.name for m in recipe.metric], path.name


def onsets_doc(times_materials: list[tuple[float, str | None]]) -> dict:
    return {"format": "avgen-onsets", "version": 1,
            "onsets": [{"time": t, "material": m} for t, m in times_materials]}


def measured_onsets(wav: Path) -> tuple[np.ndarray, int]:
    y, sr = sf.read(str(wav), dtype="float64")
    return librosa.onset.onset_detect(y=y, sr=sr, hop_length=HOP, units="time"), sr


def test_onsets_out_writes_the_detected_contacts_in_the_documented_format(timed_run, tmp_path, capsys):
    run, video = timed_run
    hits = tmp_path / "hits.json"
    code, _, err = avgen_in_process(capsys, "generate", str(video), "--run", str(run), "-o", str(tmp_path / "out.mp4"),
                     "--onsets-out", str(hits))
    assert code == 0, err
    assert (tmp_path / "out.mp4").is_file() and (tmp_path / "out.wav").is_file()  # the usual sound as well
    doc = json.loads(hits.read_text())
    assert doc["format"] == "avgen-onsets" and doc["version"] == 1 and doc["detector"] == "region_contacts"  # the fallback of a run that keeps no detector
    assert doc["materials"] == ["carpet", "ceramic", "cloth"] and doc["duration"] == pytest.approx(4.0, abs=0.05)
    times = [o["time"] for o in doc["onsets"]]
    assert times and times == sorted(times) and all(0 <= t <= doc["duration"] for t in times)
    for onset in doc["onsets"]:
        assert set(onset) == {"time", "confidence", "material", "probability"}
        assert 0 <= onset["confidence"] <= 1 and onset["material"] in doc["materials"] and 0 < onset["probability"] <= 1


@pytest.mark.parametrize("mode", ["--exemplar", "--raw"])
def test_an_edited_onset_moves_the_hit_in_the_output_by_the_edited_amount(timed_run, tmp_path, mode, capsys):
    run, video = timed_run
    measured = []
    for time in (1.0, 1.35):
        path = tmp_path / f"onsets{time}.json"  # not at{time}.json: the summary written beside at{time}.mp4
        path.write_text(json.dumps(onsets_doc([(time, "carpet")])))
        out = tmp_path / f"at{time}.mp4"
        code, _, err = avgen_in_process(capsys, "generate", str(video), "--run", str(run), "-o", str(out), "--onsets", str(path), mode)
        assert code == 0, err
        onsets, sr = measured_onsets(out.with_suffix(".wav"))
        y, _ = sf.read(str(out.with_suffix(".wav")))
        assert np.abs(y[: round(time * sr) - 1]).max() == 0  # nothing sounds before the onset
        assert abs(onsets[0] - time) <= 2 * HOP / sr, onsets  # librosa's frame lags the true onset by up to one hop
        assert onsets[-1] < time + 0.5  # the one hit (an exemplar, or a generated window, lasts one 0.5 s clip)
        measured.append(onsets[0])
    assert abs((measured[1] - measured[0]) - 0.35) <= HOP / sr


def test_deleted_and_added_onsets_are_what_sounds(timed_run, tmp_path, capsys):
    run, video = timed_run
    path = tmp_path / "onsets.json"  # not two.json: the summary written beside two.mp4
    path.write_text(json.dumps(onsets_doc([(2.5, None), (0.6, "cloth")])))  # any order; material optional
    code, _, err = avgen_in_process(capsys, "generate", str(video), "--run", str(run), "-o", str(tmp_path / "two.mp4"), "--onsets", str(path),
                     "--exemplar")
    assert code == 0, err
    onsets, sr = measured_onsets(tmp_path / "two.wav")
    y, _ = sf.read(str(tmp_path / "two.wav"))
    assert np.abs(y[: round(0.6 * sr) - 1]).max() == 0 and np.abs(y[round(1.1 * sr):round(2.5 * sr) - 1]).max() == 0
    near = lambda t: [o for o in onsets if abs(o - t) <= 2 * HOP / sr]  # noqa: E731
    assert near(0.6) and near(2.5), onsets  # a hit at each onset (an exemplar may hold more than one, e.g. a scratch)
    path.write_text(json.dumps(onsets_doc([])))
    code, _, err = avgen_in_process(capsys, "generate", str(video), "--run", str(run), "-o", str(tmp_path / "none.mp4"), "--onsets", str(path))
    assert code == 0, err
    y, _ = sf.read(str(tmp_path / "none.wav"))
    assert np.abs(y).max() == 0  # every onset deleted: silence


@pytest.mark.parametrize("doc,expected", [
    ({"format": "avgen-onsets", "onsets": [{"time": 1.0, "material": "marble"}]}, "onsets.0.material 'marble' is not a class"),
    ({"format": "avgen-onsets", "onsets": [{"time": 9.0}]}, "past the end of the video"),
    ({"format": "avgen-onsets", "onsets": [{"tme": 1.0}]}, "onsets.0.time"),
    ({"format": "avgen-onsets", "onsets": [{"time": -1.0}]}, "onsets.0.time"),
    ({"format": "other", "onsets": []}, "expected 'avgen-onsets'"),
    ("not json", "not JSON"),
])
def test_a_bad_onsets_file_is_one_line(tmp_path, doc, expected):
    from avgen import AvgenError
    from avgen_timing.onsets import read_onsets

    path = tmp_path / "bad.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    with pytest.raises(AvgenError) as info:
        read_onsets(path, ["carpet", "ceramic", "cloth"], duration=4.0)
    assert expected in str(info.value) and "\n" not in str(info.value) and str(path) in str(info.value)


def test_a_bad_onsets_file_exits_2_with_one_error_line(timed_run, tmp_path, capsys):
    run, video = timed_run
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(onsets_doc([(1.0, "marble")])))
    code, _, err = avgen_in_process(capsys, "generate", str(video), "--run", str(run), "-o", str(tmp_path / "x.mp4"), "--onsets", str(path))
    errors = [line for line in err if line.startswith("error:")]  # after the "loaded ..." line
    assert code == 2 and len(errors) == 1 and "marble" in errors[0] and not any("Traceback" in e for e in err), err


def test_conflicting_options_and_an_unknown_detector_are_one_line_and_exit_2(timed_run, tmp_path, capsys):
    run, video = timed_run
    both = avgen_in_process(capsys, "generate", str(video), "--run", str(run), "--onsets", "a.json", "--onsets-out",
                            "b.json")
    unknown = avgen_in_process(capsys, "generate", str(video), "--run", str(run), "--onsets-out",
                               str(tmp_path / "h.json"), "--detector", "nope")
    events = avgen_in_process(capsys, "generate", str(video), "--run", str(run), "--onsets", "a.json", "--mode",
                              "events")
    for code, _, err in (both, unknown, events):
        assert code == 2 and len(err) == 1, err
    assert "nope" in unknown[2][0]


# ---------------------------------------------------------------- the hooks behind sound by events


@pytest.fixture
def without_timing_hooks():
    """The loaded plugins with the timing plugin's hooks unregistered (its components stay in the registry):
    as if no plugin made sound by events."""
    from avgen._core.plugins import get_plugins

    pm = get_plugins().pm
    timing = pm.unregister(name="timing")
    try:
        yield
    finally:
        pm.register(timing, name="timing")


@pytest.fixture
def run_keeping_a_detector(timed_run, tmp_path) -> tuple[Path, Path]:
    """A copy of the tiny run that keeps motion_contacts (it learns nothing), and a video."""
    import shutil

    run, video = timed_run
    kept = tmp_path / "kept"
    shutil.copytree(run, kept)
    (kept / "detector.json").write_text(json.dumps({"detector": "motion_contacts", "params": {}}))
    return kept, video


def test_without_an_events_plugin_events_are_one_line_and_auto_slides_windows(run_keeping_a_detector, tmp_path,
                                                                              capsys, without_timing_hooks):
    run, video = run_keeping_a_detector
    for args in (("--mode", "events"), ("--onsets", str(tmp_path / "a.json")), ("--onsets-out", str(tmp_path / "b.json")),
                 ("--detector", "motion_contacts")):
        code, _, err = avgen_in_process(capsys, "generate", str(video), "--run", str(run), "-o", str(tmp_path / "x.wav"),
                                        *args)
        assert code == 2 and len(err) == 1 and "no plugin makes sound by events" in err[0] and "timing" in err[0], err
    code, _, err = avgen_in_process(capsys, "generate", str(video), "--run", str(run), "-o", str(tmp_path / "auto"))
    assert code == 0, err
    summary = json.loads((tmp_path / "auto" / f"{video.stem}.avgen.json").read_text())
    assert summary["mode"] == "windows" and summary["windows"] > 0  # the sliding windows, though the run keeps a detector
    assert sorted(p.name for p in tmp_path.iterdir()) == ["auto", "kept"]  # nothing else written


def test_another_plugin_can_make_sound_by_events(run_keeping_a_detector, tmp_path, capsys):
    """A plugin answering the hooks makes the events sound instead (the first answer wins; pluggy asks the plugin
    registered last first): it gets the model, the video, the detector and the options."""
    import torch

    import avgen
    from avgen._core.plugins import get_plugins

    seen = []

    class Renderer:
        @avgen.hookimpl
        def events_detector(self):
            return "motion_contacts"

        @avgen.hookimpl
        def sound_of_events(self, model, video, detector, detector_name, material):
            seen.append((video, detector_name, material, detector.fps))
            rate = model.sample_rate
            return torch.full((rate,), 0.25), {"video": str(video), "seconds": 1.0, "sample_rate": rate, "onsets": 0}

    run, video = run_keeping_a_detector
    pm = get_plugins().pm
    pm.register(Renderer(), name="renderer")
    try:
        code, _, err = avgen_in_process(capsys, "generate", str(video), "--run", str(run), "-o", str(tmp_path / "r"),
                                        "--material", "cloth")
        assert code == 0, err
        wave, summary = avgen.load(run, "cpu").events(video)
    finally:
        pm.unregister(name="renderer")
    kept = "motion_contacts (kept with the model)"  # the Python API names the detector as the CLI does
    assert seen == [(video, kept, 2, 30.0), (video, kept, None, 30.0)]
    y, _ = sf.read(tmp_path / "r" / f"{video.stem}.avgen.wav")
    assert y.shape == (22050,) and np.allclose(y, 0.25, atol=1e-4)
    assert json.loads((tmp_path / "r" / f"{video.stem}.avgen.json").read_text())["onsets"] == 0
    assert float(wave.max()) == 0.25 and summary["onsets"] == 0
