"""``avgen.load``: a trained model as one object, from a run directory or an exported folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import avgen
from conftest import run_avgen


@pytest.fixture(scope="module")
def model(tiny_run: Path, one_thread) -> avgen.SoundModel:
    import os

    os.environ["AVGEN_HOME"] = str(tiny_run.parents[1] / "home")  # the run's feature cache (exemplars)
    try:
        yield avgen.load(tiny_run, "cpu")
    finally:
        os.environ.pop("AVGEN_HOME", None)


def a_video(run: Path, k: int = 0) -> Path:
    return sorted((run.parents[1] / "data").glob("*_denoised.mp4"))[k]


def test_load_gives_the_pieces_of_the_run(model: avgen.SoundModel, tiny_run: Path) -> None:
    recipe = json.loads(json.dumps(avgen.read_recipe(tiny_run)))
    assert model.name == "can_lstm" == recipe["generator"]["name"]
    assert model.class_names == json.loads((tiny_run / "dataset.json").read_text())["class_names"]
    assert model.sample_rate == 22050 and model.clip_seconds == 0.5
    assert model.encoder.fps == 8 and model.representation.dim == 1025
    assert isinstance(model.generator, torch.nn.Module) and not model.generator.training
    assert model.run_dir == tiny_run and "can_lstm" in repr(model)


def test_sound_of_a_video_covers_it_and_names_a_class(model: avgen.SoundModel, tiny_run: Path) -> None:
    wave, summary = model.sound(a_video(tiny_run))
    assert wave.shape == (round(4.0 * 22050),) and float(wave.abs().max()) <= 1.0
    assert float(wave.abs().max()) > 1e-4
    assert summary["predicted"] in model.class_names and summary["windows"] == 15  # 0.5 s windows every 0.25 s


def test_a_stream_iterates_over_the_blocks_of_the_same_sound(model: avgen.SoundModel, tiny_run: Path) -> None:
    """``for block in model.stream(video)``, as the README writes it: the blocks of ``sound``'s wave, in order."""
    from avgen._core.videosound import within_unit

    video = a_video(tiny_run, 1)
    job = model.stream(video)
    blocks = [block for block in job]
    assert blocks and all(block.dim() == 1 for block in blocks)
    assert torch.equal(within_unit(torch.cat(blocks)), model.sound(video)[0])


def test_features_given_back_give_the_same_sound(model: avgen.SoundModel, tiny_run: Path) -> None:
    video = a_video(tiny_run, 1)
    features = model.features(video)
    assert features.shape == (32, model.encoder.dim)  # 4 s at 8 fps
    assert torch.equal(model.sound(video, features=features)[0], model.sound(video)[0])


def test_exemplar_sound_is_made_of_training_clips(model: avgen.SoundModel, tiny_run: Path) -> None:
    """Each window's sound is a training clip's wave itself (paper Eq. 8), as the provenance names it."""
    video = a_video(tiny_run, 2)
    bank = model.bank()
    stream = model.stream(video, exemplar=True)
    pieces = list(stream.blocks())
    provenance = stream.summary["provenance"]
    assert len(provenance) == stream.summary["windows"] and bank is model.bank()  # indexed once
    first = provenance[0]
    index = [entry["clip"] for entry in bank.entries].index(first["clip"])
    head = torch.cat(pieces)[: round(0.25 * 22050)]  # before the second window starts, only the first one sounds
    assert torch.allclose(head, bank.waves[index, : head.numel()].float(), atol=1e-6)


def test_a_forced_material_is_what_the_summary_names(model: avgen.SoundModel, tiny_run: Path) -> None:
    name = model.class_names[-1]
    _, summary = model.sound(a_video(tiny_run), material=name)
    assert summary["material"] == name
    with pytest.raises(avgen.AvgenError, match="is not a class of this model"):
        model.sound(a_video(tiny_run), material="unobtainium")


def test_a_forced_material_needs_a_class_head_and_says_so_before_any_work(
        model: avgen.SoundModel, tiny_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A generator that declares no class probabilities cannot voice a forced class: one line naming it, up front."""
    monkeypatch.setattr(model.generator, "provides", frozenset({"rep"}))
    monkeypatch.setattr(model, "frames_precision", lambda *a, **k: pytest.fail("the video was read before the check"))
    name = model.recipe.generator.name
    for material in (model.class_names[0], 0):
        with pytest.raises(avgen.AvgenError, match=f"generator '{name}' has no class head to force a material"):
            model.sound(a_video(tiny_run), material=material)


def test_weights_that_do_not_fit_name_the_weight_and_what_to_do(model: avgen.SoundModel, tmp_path: Path) -> None:
    """torch's first mismatch (which weight, which shapes), and the way out for a run and for an exported folder."""
    import copy

    from avgen._core.components import SavedModel
    from avgen._core.loading import build_saved

    meta = copy.deepcopy(model.meta)
    meta["recipe"]["generator"]["hidden"] = int(meta["recipe"]["generator"].get("hidden", 128)) + 8
    saved = SavedModel(model.generator.state_dict(), meta)
    for source, way_out in ((tmp_path / "run" / "recipe.toml", "--fresh retrains it"),
                            (tmp_path / "model" / "config.json", "install the version its config.json names")):
        with pytest.raises(avgen.AvgenError) as caught:
            build_saved(saved, source, source.parent, torch.device("cpu"))
        message = str(caught.value)
        assert "size mismatch for " in message and "torch.Size([" in message and way_out in message, message
        assert "Error(s) in loading" not in message and "\n" not in message


def test_sound_of_frames_equals_the_sound_of_a_one_clip_video(model: avgen.SoundModel, tmp_path: Path) -> None:
    """Two paths to the same clip: frames decoded here and handed over, or the video file read by the model."""
    import numpy as np

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)  # 0.5 s at 8 fps
    video = tmp_path / "clip.mp4"
    avgen.write_video(video, np.repeat(frames, 4, axis=0), 32)  # each frame shown for 1/8 s
    decoded = avgen.read_frames(video, model.encoder.fps, model.encoder.input_size)
    by_frames, outputs = model.sound_of_frames(decoded)
    by_video, summary = model.sound(video)
    assert summary["windows"] == 1 and by_frames.shape == by_video.shape == (round(0.5 * 22050),)
    assert torch.allclose(by_frames, by_video, atol=1e-5)
    assert model.class_probabilities(outputs).shape == (1, len(model.class_names))
    with pytest.raises(avgen.AvgenError, match=r"uint8 \[N, H, W, 3\]"):
        model.sound_of_frames(decoded.float())


def test_an_exported_folder_loads_to_the_same_model(model: avgen.SoundModel, tiny_run: Path, tmp_path: Path) -> None:
    proc = run_avgen("export", str(tiny_run), str(tmp_path / "exported"),
                     env={"AVGEN_HOME": str(tiny_run.parents[1] / "home")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    shutil.copytree(tmp_path / "exported", tmp_path / "elsewhere")
    exported = avgen.load(tmp_path / "elsewhere", "cpu")
    assert exported.run_dir is None and exported.class_names == model.class_names
    video = a_video(tiny_run, 3)
    assert torch.allclose(exported.sound(video)[0], model.sound(video)[0], atol=1e-6)
    by_folder = exported.sound(video, exemplar=True)[1]["provenance"]
    by_run = model.sound(video, exemplar=True)[1]["provenance"]
    assert [w["clip"] for w in by_folder] == [w["clip"] for w in by_run]


def test_load_of_what_is_not_a_model_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(avgen.AvgenError, match="no such folder"):
        avgen.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(avgen.AvgenError, match="not a model folder"):
        avgen.load(tmp_path / "empty")


def test_windows_of_a_few_contacts_encode_only_their_frames(model: avgen.SoundModel, tiny_run: Path, monkeypatch) -> None:
    """A few windows in a longer video: only their frames go through the encoder, and their features are those
    the whole video's features give (to float rounding: the encoder sees other batches)."""
    from avgen._core.model import window_features

    video = a_video(tiny_run)
    fps, per_clip = model.encoder.fps, max(1, round(model.clip_seconds * model.encoder.fps))
    times = [0.1, 1.0, 1.1, 3.9]  # clamped at both ends; the middle two overlap
    whole = window_features(model.features(video), times, fps, per_clip)
    seen = []
    encode = model.encoder.encode
    monkeypatch.setattr(model.encoder, "encode", lambda frames: seen.append(frames.shape[0]) or encode(frames))
    sparse = model._window_features(video, times)
    assert sparse.shape == whole.shape
    assert torch.allclose(sparse, whole, atol=1e-5)
    assert sum(seen) < model.features(video).shape[0] / 2  # what was encoded for the windows alone


def test_events_of_a_model_without_a_detector_find_the_contacts_generate_finds(model: avgen.SoundModel, tiny_run: Path,
                                                                               tmp_path: Path) -> None:
    """A run whose recipe keeps no [detector] (the paper's recipes): ``events`` takes the events plugin's fallback, as
    ``avgen generate --mode events`` does, instead of refusing."""
    video = a_video(tiny_run)
    assert model.detector is None
    wave, summary = model.events(video)
    assert summary["detector"] == "region_contacts" and wave.shape == (round(4.0 * 22050),)
    proc = run_avgen("generate", str(video), "--run", str(tiny_run), "--mode", "events", "-o", str(tmp_path / "out.mp4"),
                     env={"AVGEN_HOME": str(tiny_run.parents[1] / "home")})
    assert proc.returncode == 0, proc.stderr
    cli = json.loads((tmp_path / "out.json").read_text())
    assert [c["time"] for c in cli["contacts"]] == [c["time"] for c in summary["contacts"]]
