"""`avgen generate --library SFX_DIR`: the user's own sounds as the exemplar bank, with provenance per window."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch

import avgen
from avgen_share.library import LIBRARY_CSV, UNKNOWN_LICENCE, detect_onsets, index_library
from conftest import avgen_in_process
from library_support import fetch_sonic_pi, write_library
from test_generate import RECIPE, wide_consoles

RATE = 22050


def strikes(times: list[float], seconds: float, rate: int, freq: float, seed: int) -> np.ndarray:
    """Decaying tones starting at ``times`` over quiet noise: hits with known onsets."""
    rng = np.random.default_rng(seed)
    wave = rng.normal(0, 1e-4, int(seconds * rate))
    t = np.arange(int(0.3 * rate)) / rate
    for start in times:
        hit = 0.5 * np.sin(2 * np.pi * freq * t) * np.exp(-t / 0.05)
        first = int(round(start * rate))
        wave[first:first + hit.size] += hit[: wave.size - first]
    return wave.astype(np.float32)


ONSETS = {"a.wav": [0.3, 1.4], "metal/b.flac": [0.8], "c.ogg": [0.5, 1.6], "d.mp3": [0.7]}


@pytest.fixture
def library(tmp_path: Path) -> Path:
    """Four formats, a subfolder, a library.csv for two of the files; rates 22 050, 44 100, 16 000 and 22 050 Hz."""
    root = tmp_path / "sfx"
    (root / "metal").mkdir(parents=True)
    sf.write(root / "a.wav", strikes(ONSETS["a.wav"], 2.0, RATE, 440, 0), RATE, subtype="PCM_16")
    sf.write(root / "metal/b.flac", strikes(ONSETS["metal/b.flac"], 1.5, 44100, 1800, 1), 44100)
    sf.write(root / "c.ogg", strikes(ONSETS["c.ogg"], 2.0, 16000, 300, 2), 16000, format="OGG", subtype="VORBIS")
    sf.write(root / "d.mp3", strikes(ONSETS["d.mp3"], 1.2, RATE, 900, 3), RATE, format="MP3", subtype="MPEG_LAYER_III")
    (root / "notes.txt").write_text("not a sound")
    with open(root / LIBRARY_CSV, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label", "licence", "source"])
        writer.writerow(["a.wav", "bell", "CC0-1.0", "recorded for the test"])
        writer.writerow(["metal/b.flac", "metal", "CC-BY-4.0", "https://example.org/b"])
    return root


def stft_representation() -> torch.nn.Module:
    return avgen.create("representation", "stft", n_iter=4)


def test_onsets_of_known_hits() -> None:
    wave = torch.from_numpy(strikes([0.25, 0.9, 1.7], 2.2, RATE, 600, 5))
    found = sorted(t for t, _ in detect_onsets(wave, RATE))
    assert len(found) == 3
    for got, placed in zip(found, [0.25, 0.9, 1.7]):
        assert abs(got - placed) < 0.03, (got, placed)  # the detector's hop is 256 samples (12 ms)


def test_index_cuts_clips_at_each_files_onsets_in_every_format(library: Path, avgen_home: Path) -> None:
    bank = index_library(library, stft_representation(), {"name": "stft", "n_iter": 4}, 0.5)
    by_file: dict[str, list[dict]] = {}
    for entry in bank.entries:
        by_file.setdefault(entry["file"], []).append(entry)
    assert sorted(by_file) == sorted(ONSETS)
    for name, placed in ONSETS.items():
        onsets = sorted(e["onset"] for e in by_file[name])
        assert len(onsets) == len(placed), (name, onsets)
        for got, want in zip(onsets, placed):
            assert abs(got - want) < 0.03, (name, got, want)
        for entry in by_file[name]:
            assert entry["offset"] == pytest.approx(max(0.0, entry["onset"] - 0.1), abs=1 / RATE)
    assert by_file["a.wav"][0]["licence"] == "CC0-1.0" and by_file["a.wav"][0]["label"] == "bell"
    assert by_file["metal/b.flac"][0]["source"] == "https://example.org/b"
    assert by_file["c.ogg"][0]["licence"] == UNKNOWN_LICENCE and by_file["metal/b.flac"][0]["label"] == "metal"
    assert bank.waves.shape == (len(bank.entries), RATE // 2) and bank.reps.shape == (len(bank.entries), 1025)
    # each clip is the file's own samples from its offset (a.wav is already at 22 050 Hz): read with soundfile
    data, _ = sf.read(library / "a.wav", dtype="float32")
    for row, entry in enumerate(bank.entries):
        if entry["file"] == "a.wav":
            first = round(entry["offset"] * RATE)
            np.testing.assert_allclose(bank.waves[row].numpy(), data[first:first + RATE // 2], atol=2e-4)
    # the key is the time-averaged magnitude STFT (Hann 2048, hop 512, centred), computed here with torch.stft
    row = next(i for i, e in enumerate(bank.entries) if e["file"] == "a.wav")
    spec = torch.stft(bank.waves[row].double(), 2048, 512, window=torch.hann_window(2048, dtype=torch.float64),
                      center=True, pad_mode="constant", return_complex=True).abs()
    cosine = torch.nn.functional.cosine_similarity(spec.mean(1), bank.reps[row].double(), dim=0)
    assert float(cosine) > 0.999


def test_the_index_is_cached_and_follows_changed_files(library: Path, avgen_home: Path) -> None:
    rep = stft_representation()
    first = index_library(library, rep, {"name": "stft"}, 0.5)
    entries = sorted((avgen_home / "cache" / "library").glob("*.safetensors"))
    assert len(entries) == 1
    os.utime(entries[0], ns=(1, 1))  # a marker: a rebuilt entry would get a new modification time
    again = index_library(library, rep, {"name": "stft"}, 0.5)
    assert entries[0].stat().st_mtime_ns == 1 and torch.equal(again.reps, first.reps) and again.entries == first.entries
    sf.write(library / "e.wav", strikes([0.2], 1.0, RATE, 700, 9), RATE)
    grown = index_library(library, rep, {"name": "stft"}, 0.5)
    assert len(grown.entries) == len(first.entries) + 1 and [e["file"] for e in grown.entries].count("e.wav") == 1
    assert len(list((avgen_home / "cache" / "library").glob("*.safetensors"))) == 2


def short_video(path: Path, seconds: float = 0.5, fps: int = 8) -> Path:
    """A video of ``seconds`` (one generation window), random frames."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for _ in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def test_generate_with_a_library_records_file_offset_licence_and_similarity(
        tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "wavs"
    (root / "wood").mkdir(parents=True)
    files = {"wood/low.wav": (200, [0.2, 1.1]), "wood/mid.wav": (900, [0.4]), "high.wav": (3000, [0.3, 0.9])}
    for seed, (name, (freq, times)) in enumerate(files.items()):
        sf.write(root / name, strikes(times, 1.5, RATE, freq, seed), RATE, subtype="FLOAT")
    (root / LIBRARY_CSV).write_text("file,label,licence,source\nhigh.wav,glass,CC0-1.0,made here\n")
    video = short_video(tmp_path / "one_window.mp4")
    monkeypatch.setenv("AVGEN_HOME", str(tmp_path / "home"))
    wide_consoles(monkeypatch)
    code, _, lines = avgen_in_process(capsys, "generate", str(video), "--run", str(tiny_run), "--library", str(root),
                                      "-o", str(tmp_path / "out"))
    assert code == 0, lines[-20:]
    record = json.loads((tmp_path / "out" / "one_window.avgen.json").read_text())
    assert record["exemplars"] == f"sound library {root.resolve()}" and "indexed 5 clips from 3 files" in "\n".join(lines)
    (window,) = record["provenance"]
    assert window["file"] in files and (window["start"], window["end"]) == (0.0, 0.5)
    expected = {"licence": "CC0-1.0", "label": "glass", "source": "made here"} if window["file"] == "high.wav" else \
        {"licence": UNKNOWN_LICENCE, "label": "wood", "source": ""}
    assert {k: window[k] for k in expected} == expected
    assert 0.0 < window["similarity"] <= 1.0
    # one window: the output is the library clip itself, read here from the file at the recorded offset
    out, rate = sf.read(tmp_path / "out" / "one_window.avgen.wav", dtype="float32")
    source, _ = sf.read(root / window["file"], dtype="float32")
    first = round(window["offset"] * rate)
    assert rate == RATE and any(abs(window["onset"] - t) < 0.03 for t in files[window["file"]][1])
    np.testing.assert_allclose(out, source[first:first + out.size], atol=3 / 32768)
    assert np.abs(out).max() > 0.1


@pytest.mark.parametrize("case,expected", [
    ("no_audio", "no wav/flac/ogg/mp3 files"),
    ("not_a_folder", "not a folder; give a folder of wav/flac/ogg/mp3 files"),
    ("csv_names_a_missing_file", "line 2 names 'gone.wav', which is not a file"),
    ("csv_without_file_column", "no 'file' column"),
])
def test_bad_library_is_one_line_exit_2(tiny_run: Path, tmp_path: Path, case: str, expected: str,
                                        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "sfx"
    root.mkdir()
    if case == "not_a_folder":
        root = tmp_path / "file.wav"
        sf.write(root, strikes([0.1], 0.5, RATE, 440, 0), RATE)
    elif case != "no_audio":
        sf.write(root / "a.wav", strikes([0.1], 0.5, RATE, 440, 0), RATE)
        header = "file,label" if case == "csv_names_a_missing_file" else "name,label"
        (root / LIBRARY_CSV).write_text(f"{header}\ngone.wav,x\n")
    monkeypatch.setenv("AVGEN_HOME", str(tmp_path / "home"))
    video = short_video(tmp_path / "v.mp4")
    code, _, lines = avgen_in_process(capsys, "generate", str(video), "--run", str(tiny_run), "--library", str(root),
                                      "-o", str(tmp_path / "out"))
    assert code == 2 and lines[-1].startswith("error:") and expected in lines[-1], lines
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- real recordings


@pytest.fixture(scope="session")
def sonic_pi_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Debian's sonic-pi-samples (CC0/MIT recordings) as a library, with library.csv from the package's copyright file."""
    folder = tmp_path_factory.mktemp("sonic_pi")
    extracted = fetch_sonic_pi(folder)
    if extracted is None:
        pytest.skip("sonic-pi-samples not downloadable (apt-get download failed: offline, or no apt)")
    write_library(extracted, folder / "library")
    return folder / "library"


@pytest.mark.network
def test_a_library_of_real_recordings_is_indexed_and_named_in_the_record(sonic_pi_library: Path, tiny_run: Path,
                                                                          tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    rows = {r["file"]: r for r in csv.DictReader(open(sonic_pi_library / LIBRARY_CSV))}
    assert len(rows) >= 150
    video = sorted((tiny_run.parents[1] / "data").glob("*_denoised.mp4"))[0]
    monkeypatch.setenv("AVGEN_HOME", str(tmp_path / "home"))
    wide_consoles(monkeypatch)
    code, _, lines = avgen_in_process(capsys, "generate", str(video), "--run", str(tiny_run), "--library",
                                      str(sonic_pi_library), "-o", str(tmp_path / "out"))
    assert code == 0, lines[-20:]
    indexed = [line for line in lines if "indexed" in line]
    assert indexed and f"from {len(rows)} files (0 skipped)" in indexed[0]
    clips = int(indexed[0].split("indexed ")[1].split()[0])
    assert clips >= 300  # a few hundred clips around the onsets of 165 recordings
    record = json.loads((tmp_path / "out" / f"{video.stem}.avgen.json").read_text())
    assert len(record["provenance"]) == record["windows"] >= 10
    for window in record["provenance"]:
        assert (sonic_pi_library / window["file"]).is_file()
        assert window["licence"] == rows[window["file"]]["licence"] and window["licence"] in ("CC0", "MIT")
        assert window["source"] == rows[window["file"]]["source"]
    # the second run reads the index from the cache
    code, _, lines = avgen_in_process(capsys, "generate", str(video), "--run", str(tiny_run), "--library",
                                      str(sonic_pi_library), "-o", str(tmp_path / "out2"))
    assert code == 0 and f"{clips} clips from the index cache" in "\n".join(lines), lines[-20:]


def test_a_run_takes_its_exemplar_sounds_from_a_library(tmp_path: Path, example_plugin: None,
                                                        capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """eval.library: the generate stage's exemplar sounds (and the report's players) come from the library; the
    training-clip retrieval behind R@K is unchanged."""
    root = tmp_path / "wavs"
    root.mkdir()
    for seed, freq in enumerate((250, 1200, 4000)):
        sf.write(root / f"hit{freq}.wav", strikes([0.2, 0.9], 1.5, RATE, freq, seed), RATE, subtype="FLOAT")
    (root / LIBRARY_CSV).write_text("file,label,licence,source\nhit250.wav,low,CC0-1.0,made here\n")
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(RECIPE.format(root=str(tmp_path / "data")))
    monkeypatch.setenv("AVGEN_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    code, _, lines = avgen_in_process(capsys, "run", str(recipe), "--out", str(tmp_path / "runs"), "--set",
                                      f"eval.library={root}")
    assert code == 0, lines[-20:]
    run = tmp_path / "runs" / "tiny"
    index = json.loads((run / "generated" / "index.json").read_text())
    assert index["clips"] and all(c["exemplar_id"] is None and len(c["retrieved"]) >= 1 for c in index["clips"])
    for clip in index["clips"]:
        entry = clip["exemplar_library"]
        assert entry["file"] in {"hit250.wav", "hit1200.wav", "hit4000.wav"} and 0 < entry["similarity"] <= 1
        assert entry["licence"] == ("CC0-1.0" if entry["file"] == "hit250.wav" else UNKNOWN_LICENCE)
        out, rate = sf.read(run / clip["exemplar"], dtype="float32")
        source, _ = sf.read(root / entry["file"], dtype="float32")
        first = round(entry["offset"] * rate)
        np.testing.assert_allclose(out, source[first:first + out.size], atol=3 / 32768)
    assert "R@1" in json.loads((run / "metrics.json").read_text())["recall_at_k"] and (run / "report.html").is_file()
