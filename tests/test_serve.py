"""`avgen serve`: the web page in a real headless Chromium, its JSON API, its errors and its clean-up."""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from avgen_serve.listening import read_ratings
from conftest import error_lines, run_avgen
from serve_support import Browser, ServeProcess, audio_elements_loaded, chromium


@pytest.fixture(scope="module")
def tiny(tiny_run: Path) -> dict:
    """The shared tiny trained run, its AVGEN_HOME (feature cache) and a video of its dataset."""
    base = tiny_run.parents[1]
    return {"run": tiny_run, "env": {"AVGEN_HOME": str(base / "home")},
            "video": sorted((base / "data").glob("*_denoised.mp4"))[0]}


def rms_of_wav(data: bytes) -> tuple[float, float]:
    """(RMS, seconds) of a wav file's bytes."""
    wave, rate = sf.read(io.BytesIO(data), dtype="float32")
    return float(np.sqrt(np.mean(np.square(wave)))), len(wave) / rate


def rms_of_mp4_audio(data: bytes) -> tuple[float, float]:
    """(RMS, seconds) of the first audio track of an mp4's bytes."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(stream)])
        return float(np.sqrt(np.mean(np.square(samples)))), len(samples) / stream.rate


def test_serve_without_its_extra_says_how_to_install_it(tmp_path: Path) -> None:
    import subprocess

    code = "import sys; sys.modules['uvicorn'] = None; from avgen._core.cli import main; main(['serve', '.'])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert error_lines(proc) == ['error: avgen serve needs its extra: pip install -e ".[serve]" (Starlette and uvicorn)']


def test_serve_refuses_a_folder_without_trained_runs(tmp_path: Path) -> None:
    proc = run_avgen("serve", str(tmp_path), "--port", "0")
    assert proc.returncode == 2
    lines = error_lines(proc)
    assert len(lines) == 1 and "holds no trained run" in lines[0]
    assert lines[0].endswith("train one with `avgen run quickstart`")  # a shipped recipe, run by name


def test_api_checks_uploads_rates_blind_trials_and_cleans_up(tiny: dict, tmp_path: Path) -> None:
    twin = tmp_path / "twin"  # a second run with the same test clips: a trial over two runs
    shutil.copytree(tiny["run"], twin, ignore=shutil.ignore_patterns("listening"))
    (twin / "report.html").unlink()
    limit_mb = math.ceil(tiny["video"].stat().st_size * 1.2 / 2**20 * 100) / 100
    with ServeProcess(str(tiny["run"]), str(twin), "--max-upload-mb", str(limit_mb), env=tiny["env"]) as server:
        runs = json.loads(server.get("/api/runs")[1])["runs"]
        assert [r["name"] for r in runs] == ["tiny", "tiny"] and runs[0]["test_clips"] > 0
        status, body = server.post("/api/upload?name=notes.txt", b"hello", "application/octet-stream")
        assert status == 400 and "not a video file name" in body["error"]
        status, body = server.post("/api/upload?name=fake.mp4", b"not a video at all" * 10, "application/octet-stream")
        assert status == 400 and body["error"] == "fake.mp4: not a video this server can read (corrupt, or not a video file)"
        status, body = server.post("/api/upload?name=big.mp4", b"\0" * (int(limit_mb * 2**20) + 1000),
                                   "application/octet-stream")
        assert status == 413 and f"over this server's limit of {limit_mb:g} MB" in body["error"]
        status, body = server.post("/api/generate", {"runs": ["r9"], "upload": "x"})
        assert status == 400 and "no run 'r9'" in body["error"]
        assert server.get("/api/jobs/nothing")[0] == 400
        assert server.get("/files/../../etc/passwd")[0] == 404

        status, upload = server.post(f"/api/upload?name={tiny['video'].name}", tiny["video"].read_bytes(),
                                     "application/octet-stream")
        assert status == 200 and upload["seconds"] == pytest.approx(4.0, abs=0.1)
        status, job = server.post("/api/generate", {"runs": ["r0", "r1"], "upload": upload["upload"]})
        assert status == 200
        while job["state"] in ("queued", "running"):
            time.sleep(0.3)
            job = json.loads(server.get(f"/api/jobs/{job['id']}")[1])
        assert job["state"] == "done" and job["progress"] == 1 and len(job["results"]) == 4
        status, again = server.post("/api/generate", {"runs": ["r0"], "upload": upload["upload"]})
        assert status == 400 and "upload the video again" in again["error"]

        status, trial = server.post("/api/trial", {"runs": ["r0", "r1"]})
        assert status == 200 and len(trial["stimuli"]) == 5  # hidden reference + raw and exemplar of each run
        assert all(re.fullmatch(r"/trial/\w+/[A-E]\.wav", s["url"]) for s in trial["stimuli"])
        for s in trial["stimuli"]:
            status, data = server.get(s["url"])
            assert status == 200 and rms_of_wav(data)[0] > 0
        status, body = server.post("/api/rate", {"trial": trial["trial"], "scores": {"A": 10}})
        assert status == 400 and "missing: B, C, D, E" in body["error"]
        scores = {s["label"]: 10.0 * (i + 1) for i, s in enumerate(trial["stimuli"])}
        status, body = server.post("/api/rate", {"trial": trial["trial"], "rater": "tester", "scores": scores})
        assert status == 200 and body["saved"] == 6  # the hidden reference's score goes to both runs
        status, again = server.post("/api/rate", {"trial": trial["trial"], "scores": scores})
        assert status == 400 and "no open trial" in again["error"]
        for run_dir in (tiny["run"], twin):
            mine = [r for r in read_ratings(run_dir) if r["trial"] == trial["trial"]]
            assert sorted(r["system"] for r in mine) == ["exemplar", "raw", "reference"]
            assert all(r["rater"] == "tester" and r["clip"] == trial["clip"] for r in mine)
        both = [r["score"] for d in (tiny["run"], twin) for r in read_ratings(d) if r["trial"] == trial["trial"]]
        assert sorted(set(both)) == sorted(scores.values())
        status, scores_now = server.post("/api/trial", {"runs": ["r1"]})  # the server still answers
        assert status == 200
        served_files = {r["wav"]: server.get(r["wav"])[1] for r in job["results"]}
    stderr = "".join(server.stderr)
    assert server.proc.returncode == 0 and "Traceback" not in stderr
    removed = re.search(r"removed (\S+)", stderr)
    assert removed and not Path(removed.group(1)).exists()
    assert "<h2>Listening test</h2>" in (tiny["run"] / "report.html").read_text()  # rewritten after the ratings

    # the page's sounds are avgen generate's: the same functions, the video's features shared by the two runs
    proc = run_avgen("generate", str(tiny["video"]), "--run", str(tiny["run"]), "-o", str(tmp_path / "cli"), env=tiny["env"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    cli, _ = sf.read(tmp_path / "cli" / f"{tiny['video'].stem}.avgen.wav", dtype="int16")
    for result in job["results"]:
        if result["method"] == "raw":
            served, _ = sf.read(io.BytesIO(served_files[result["wav"]]), dtype="int16")
            assert np.abs(served.astype(int) - cli.astype(int)).max() <= 3


@pytest.mark.skipif(chromium() is None, reason="needs Chromium (Debian: apt-get install chromium) for the browser test")
def test_page_in_a_real_browser_uploads_generates_plays_and_rates(tiny: dict, tmp_path: Path) -> None:
    run_dir = tiny["run"]
    before = len(read_ratings(run_dir))
    not_video = tmp_path / "holiday.mp4"
    not_video.write_text("this is text, not a video")
    with ServeProcess(str(run_dir), env=tiny["env"]) as server, Browser(chromium(), tmp_path / "profile") as browser:
        browser.navigate(server.url)
        browser.wait_for("document.querySelectorAll('#runs input:checked').length === 1")

        browser.set_files("#video-file", [not_video])  # a bad file: one clear line in the page
        browser.click("#generate")
        error = browser.wait_for("document.getElementById('gen-error').textContent")
        assert error == "holiday.mp4: not a video this server can read (corrupt, or not a video file)"

        browser.set_files("#video-file", [tiny["video"]])
        browser.click("#generate")
        browser.wait_for("document.getElementById('step').textContent.startsWith('done')", timeout=120)
        assert browser.evaluate("document.getElementById('gen-error').textContent") == ""
        assert browser.evaluate("document.getElementById('progress').value") == 1
        methods = browser.evaluate("[...document.querySelectorAll('#results .result')].map((r) => r.dataset.method)")
        assert methods == ["raw", "exemplar"]
        with av.open(str(tiny["video"])) as container:
            seconds = float(container.duration) / 1e6
        players = audio_elements_loaded(browser, "#results audio")
        assert len(players) == 2
        for player in players:  # the browser decoded it, and the file holds sound of the video's length
            assert player["error"] is None and player["ready"] >= 1 and abs(player["duration"] - seconds) < 0.1
            status, data = server.get(player["src"].removeprefix(server.url.rstrip("/")))
            rms, length = rms_of_wav(data)
            assert status == 200 and rms > 1e-4 and abs(length - seconds) < 0.1
        videos = audio_elements_loaded(browser, "#results video")
        for video in videos:
            assert video["error"] is None and video["width"] > 0
            status, data = server.get(video["src"].removeprefix(server.url.rstrip("/")))
            rms, length = rms_of_mp4_audio(data)
            assert status == 200 and rms > 1e-4 and abs(length - seconds) < 0.2
        links = browser.evaluate("[...document.querySelectorAll('#results a')].map((a) => a.href)")
        assert len(links) == 4 and all(link.endswith("?download=1") for link in links)

        browser.evaluate("document.getElementById('rater').value = 'browser'")
        browser.click("#start-trial")
        labels = browser.wait_for("[...document.querySelectorAll('#stimuli input')].map((s) => s.dataset.label)")
        assert labels == ["A", "B", "C"]
        loaded = audio_elements_loaded(browser, "#trial audio, #trial video")
        assert all(m["error"] is None and m["duration"] > 0 for m in loaded) and len(loaded) == 5
        given = {"A": 15, "B": 62, "C": 88}
        browser.evaluate("for (const s of document.querySelectorAll('#stimuli input')) { s.value = "
                         f"{json.dumps(given)}[s.dataset.label]; s.dispatchEvent(new Event('input')); }}")
        browser.click("#submit-trial")
        browser.wait_for("document.getElementById('trial-status').textContent.startsWith('saved 3 ratings')")
        table = browser.wait_for("document.querySelector('#mos-table') && document.querySelector('#mos-table').innerText")
        assert "reference (hidden)" in table and "n=" in table
        browser.screenshot(tmp_path / "page.png")
    ratings = read_ratings(run_dir)[before:]
    assert sorted(r["score"] for r in ratings) == [15.0, 62.0, 88.0]
    assert sorted(r["system"] for r in ratings) == ["exemplar", "raw", "reference"]
    assert {r["rater"] for r in ratings} == {"browser"}
    assert (tmp_path / "page.png").stat().st_size > 10_000


def test_a_run_that_keeps_a_detector_is_served_by_events_as_generate_makes_it(tiny: dict, tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The page makes what `avgen generate` makes by default: windows for a run without a detector, one sound per
    contact for a run that keeps one (named by its contacts' most common material)."""
    import torch

    from avgen_serve.runs import ServedRun

    monkeypatch.setenv("AVGEN_HOME", tiny["env"]["AVGEN_HOME"])
    run = tmp_path / "run"
    shutil.copytree(tiny["run"], run)
    plain = ServedRun("r0", run, torch.device("cpu"))
    assert not plain.by_events() and plain.generate(tiny["video"], "raw", None)[1]["mode"] == "windows"
    fitted = run_avgen("timing", "fit", "--run", str(run), env=tiny["env"])  # the run now keeps learned_contacts
    assert fitted.returncode == 0, fitted.stderr
    served = ServedRun("r1", run, torch.device("cpu"))
    wave, summary = served.generate(tiny["video"], "raw", None)
    proc = run_avgen("generate", str(tiny["video"]), "--run", str(run), "-o", str(tmp_path / "cli.mp4"), env=tiny["env"])
    assert proc.returncode == 0, proc.stderr
    cli = json.loads((tmp_path / "cli.json").read_text())
    assert served.by_events() and summary["mode"] == cli["mode"] == "events"
    assert [c["time"] for c in summary["contacts"]] == [c["time"] for c in cli["contacts"]]
    materials = [c["material"] for c in cli["contacts"]]
    assert summary["predicted"] == (max(materials, key=lambda m: (materials.count(m), -materials.index(m)))
                                    if materials else None)  # the most common, the first seen among ties
