"""An encoder tuned on the run's training split (``tune = "last_stage"``): kept with the run as encoder.safetensors,
its features made with it, and the same network wherever the model is loaded (avgen.load, generate, export)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import avgen
from avgen._core.featurize import fit_frame_count
from conftest import TINY_RECIPE, avgen_in_process, error_lines, run_avgen

ENCODER = '''[encoder]
name = "efficientnet_lite0"
fps = 8
input_size = 64
tune = "last_stage"
tune_epochs = 2
'''
TUNED_RECIPE = TINY_RECIPE.replace('[encoder]\nname = "mean_color"\nfps = 8\ninput_size = 32\n', ENCODER)
assert 'tune = "last_stage"' in TUNED_RECIPE


@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run directory, AVGEN_HOME) of a tiny run whose encoder was tuned."""
    root = tmp_path_factory.mktemp("tuned")
    recipe = root / "tuned.toml"
    recipe.write_text(TUNED_RECIPE.format(root=str(root / "data")))
    home = root / "home"
    proc = run_avgen("run", str(recipe), "--out", str(root / "runs"), env={"AVGEN_HOME": str(home)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "encoder tuning epoch 2/2" in proc.stderr
    return root / "runs" / "tiny", home


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def clip_frames(model: avgen.SoundModel, clip: avgen.Clip) -> torch.Tensor:
    dataset = avgen.build_dataset(model.recipe)
    frames = dataset.load_frames(clip, model.encoder.fps, model.encoder.input_size)
    return fit_frame_count(frames, 4, clip)  # 0.5 s at 8 fps


def test_the_run_keeps_the_tuned_encoder_and_its_features_are_made_with_it(tuned_run: tuple[Path, Path],
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir, home = tuned_run
    monkeypatch.setenv("AVGEN_HOME", str(home))
    weights = run_dir / "encoder.safetensors"
    record = json.loads((run_dir / "environment.json").read_text())["encoder_tuning"]
    train_clips = json.loads((run_dir / "dataset.json").read_text())["splits"]["train"]
    assert record["tuned"] == "last_stage" and record["train_clips"] == train_clips and record["epochs"] == 2
    assert record["best_epoch"] in (1, 2) and record["chosen_on"] == "validation accuracy"
    # EfficientNet-Lite0's last stage: blocks[6] (192 -> 1152 -> 320, 3x3 depthwise; three batch norms),
    # conv_head (320 -> 1280) and bn2, counted by hand
    block = 192 * 1152 + 2 * 1152 + 1152 * 9 + 2 * 1152 + 1152 * 320 + 2 * 320
    assert record["parameters"] == block + 320 * 1280 + 2 * 1280 == 1_017_600

    model = avgen.load(run_dir)
    assert model.encoder.tuned == sha256(weights)
    split = model.training_split()
    frames = clip_frames(model, split.clips[0])
    tuned = model.encoder.encode(frames)
    assert torch.allclose(tuned, torch.as_tensor(split.features[0]), atol=1e-4)  # the run's features: this network
    frozen = avgen.create("encoder", "efficientnet_lite0", fps=8, input_size=64).encode(frames)
    assert not torch.allclose(tuned, frozen, atol=1e-3)  # and tuning changed it


def test_the_tuned_stage_is_the_encoders_own_network_cut_in_two() -> None:
    """The trunk and the last stage that tuning splits the network into give the encoder's features (independent
    of the folded batch norms the encoder runs with)."""
    from avgen_vision.tuning import last_stage, trunk

    encoder = avgen.create("encoder", "efficientnet_lite0", fps=8, input_size=64, tune="last_stage")
    assert encoder.tunes and encoder.tuned is None
    frames = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    network = encoder.tuner.build().eval()
    with torch.no_grad():
        split = last_stage(network, trunk(network, encoder.preprocess(frames)))
    expected = encoder.encode(frames)
    assert float((split - expected).norm() / expected.norm()) < 1e-4


def test_export_carries_the_tuned_encoder_and_generate_needs_it(tuned_run: tuple[Path, Path], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir, home = tuned_run
    monkeypatch.setenv("AVGEN_HOME", str(home))
    folder = tmp_path / "model"
    code, _, lines = avgen_in_process(capsys, "export", str(run_dir), str(folder), "--no-exemplars")
    assert code == 0, lines
    assert "encoder.safetensors" in (folder / "SHA256SUMS").read_text()
    assert avgen.load(folder).encoder.tuned == sha256(run_dir / "encoder.safetensors")

    copy = tmp_path / "run_copy"  # a run whose tuned encoder went missing: one line naming the file, exit 2
    import shutil
    shutil.copytree(run_dir, copy)
    (copy / "encoder.safetensors").unlink()
    video = sorted((run_dir.parents[1] / "data").glob("*.mp4"))[0]
    out = tmp_path / "out.wav"
    code, _, lines = avgen_in_process(capsys, "generate", str(video), "--run", str(copy), "-o", str(out))
    assert code == 2 and len(lines) == 1 and "encoder.safetensors: missing" in lines[0], lines
    assert not out.exists()


def test_a_resumed_run_reads_its_tuned_encoder_back_instead_of_tuning_again(tuned_run: tuple[Path, Path],
                                                                            tmp_path: Path) -> None:
    run_dir, home = tuned_run
    before = sha256(run_dir / "encoder.safetensors")
    recipe = run_dir / "recipe.toml"
    proc = run_avgen("run", str(recipe), "--out", str(run_dir.parent), "--only", "featurize",
                     env={"AVGEN_HOME": str(home)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "encoder tuning" not in proc.stderr and sha256(run_dir / "encoder.safetensors") == before
    assert "(0 featurized" in proc.stderr  # the same features: the cache key holds the tuned weights' digest


def test_tuning_is_offered_for_efficientnet_lite0_only() -> None:
    with pytest.raises(avgen.AvgenError, match="tune = 'last_stage' is available for efficientnet_lite0 only"):
        avgen.create("encoder", "alexnet", weights="none", tune="last_stage")


def test_another_run_tuning_the_same_encoder_on_the_same_clips_reuses_the_tuning(tuned_run: tuple[Path, Path]) -> None:
    """A recipe's variants (or a rerun under another name) tune once: the weights come from the feature cache."""
    run_dir, home = tuned_run
    recipe = run_dir.parents[1] / "twin.toml"
    recipe.write_text((run_dir / "recipe.toml").read_text().replace('name = "tiny"', 'name = "twin"', 1))
    proc = run_avgen("run", str(recipe), "--out", str(run_dir.parent), "--only", "featurize", env={"AVGEN_HOME": str(home)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "encoder tuning epoch" not in proc.stderr and "from the feature cache" in proc.stderr
    twin = run_dir.parent / "twin"
    assert (twin / "encoder.safetensors").read_bytes() == (run_dir / "encoder.safetensors").read_bytes()
    assert json.loads((twin / "environment.json").read_text())["encoder_tuning"]["from_cache"] is True


def test_a_frozen_encoders_resolved_params_are_those_from_before_tuning_existed() -> None:
    """The tuning keys appear only when tuning is asked for, so the run ids and feature-cache keys of every earlier
    run with a frozen encoder stay the same (it resumes, its cached features serve)."""
    from avgen._core.recipefiles import load_recipes

    quickstart = load_recipes(Path(__file__).parents[1] / "recipes" / "quickstart.toml")[0]
    assert quickstart.to_toml_dict()["encoder"] == {"name": "efficientnet_lite0", "weights": "imagenet", "fps": 8.0,
                                                    "input_size": 224, "batch_size": 0, "precision": "fp32"}
    tuned = load_recipes(Path(__file__).parents[1] / "recipes" / "synthetic_hard.toml")
    params = {r.run.name: r.encoder.params for r in tuned}
    assert params["can_tuned"]["tune"] == "last_stage" and params["can_tuned"]["tune_epochs"] == 30
    assert "tune" not in params["can"]
