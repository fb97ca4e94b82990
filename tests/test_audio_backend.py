"""The encoder STFT's default backend: torch.fft for new runs (version 2 of 'stft' and 'cochleagram'), nnAudio for
runs and model folders recorded at version 1, which load, resume and generate as they were made.

Oracles: torch.stft with the representation's window (bit for bit the torch.fft path), nnAudio's own STFT module
(bit for bit the nnaudio path) and librosa.stft (both, to float32 rounding).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tomllib
from pathlib import Path

import librosa
import numpy as np
import pytest
import torch

import avgen
from avgen._core.recipe import validate_recipe
from avgen._core.recipefiles import load_recipe
from conftest import TINY_RECIPE, avgen_in_process

pytestmark = pytest.mark.usefixtures("one_thread")


def waves(count: int = 3, samples: int = 11025) -> torch.Tensor:
    """Decaying tones with noise, float32 [count, samples]."""
    g = torch.Generator().manual_seed(0)
    t = torch.arange(samples) / 22050
    tone = torch.sin(2 * torch.pi * 440 * (1 + torch.arange(count))[:, None] * t) * torch.exp(-8 * t)
    return (0.5 * tone + 0.05 * torch.randn(count, samples, generator=g)).float()


def torch_oracle(rep, wave: torch.Tensor) -> torch.Tensor:
    return torch.stft(wave, rep.n_fft, rep.hop_length, window=rep.window, center=True, pad_mode="constant",
                      return_complex=True).abs()


def nnaudio_oracle(rep, wave: torch.Tensor) -> torch.Tensor:
    from nnAudio.features import STFT

    stft = STFT(n_fft=rep.n_fft, hop_length=rep.hop_length, window="hann", freq_scale="no", center=True,
                pad_mode="constant", sr=rep.sample_rate, output_format="Magnitude", verbose=False)
    return stft(wave, output_format="Magnitude")


def relative_to_librosa(magnitude: torch.Tensor, wave: torch.Tensor) -> float:
    reference = np.abs(librosa.stft(wave.double().numpy(), n_fft=2048, hop_length=512))
    return float(np.linalg.norm(magnitude.double().numpy() - reference) / np.linalg.norm(reference))


def test_new_recipes_and_create_encode_with_torch_fft(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(TINY_RECIPE.format(root=tmp_path / "data"))
    spec = load_recipe(recipe).representation
    assert (spec.version, spec.params["backend"]) == ("2", "torch")
    assert avgen.get_component("representation", "stft").version == "2"
    wave = waves()
    for name in ("stft", "cochleagram"):
        rep = avgen.get_component("representation", name).build(spec.params if name == "stft" else {})
        assert rep.params.backend == "torch"
        magnitude = rep.magnitude(wave)
        assert torch.equal(magnitude, torch_oracle(rep, wave))
        assert relative_to_librosa(magnitude, wave) < 3e-7
    assert avgen.create("representation", "stft").params.backend == "torch"


def test_version_1_keeps_nnaudio_and_a_recorded_recipe_without_a_version_is_version_1(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(TINY_RECIPE.format(root=tmp_path / "data").replace('name = "stft"', 'name = "stft"\nversion = 1'))
    resolved = load_recipe(recipe)
    assert (resolved.representation.version, resolved.representation.params["backend"]) == ("1", "nnaudio")
    recorded = resolved.to_toml_dict()
    assert "version" not in recorded["representation"]  # as recipes were recorded before versions
    # a recorded recipe that names no backend (or no version) is read at version 1, hence nnAudio ...
    del recorded["representation"]["backend"]
    spec = validate_recipe(recorded).representation
    assert (spec.version, spec.params["backend"]) == ("1", "nnaudio")
    # ... unless it names its version, as every recipe recorded at version 2 does
    recorded["representation"]["version"] = "2"
    assert validate_recipe(recorded).representation.params["backend"] == "torch"
    rep = avgen.get_component("representation", "stft").build(spec.params)
    wave = waves()
    magnitude = rep.magnitude(wave)
    assert torch.equal(magnitude, nnaudio_oracle(rep, wave))
    assert relative_to_librosa(magnitude, wave) < 2e-6
    with pytest.raises(avgen.AvgenError, match="representation.version names a component version"):
        recipe.write_text(TINY_RECIPE.format(root=tmp_path / "data").replace('name = "stft"', 'name = "stft"\nversion = 1.5'))
        load_recipe(recipe)


def checkpoint(run: Path) -> dict[str, torch.Tensor]:
    from avgen._core.checkpoint import load_run_checkpoint

    return load_run_checkpoint(run)[1]


def test_a_run_recorded_before_the_change_resumes_loads_and_exports_with_nnaudio(tmp_path, capsys, avgen_home):
    root = tmp_path / "data"
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE.format(root=root))  # names no backend and no version, as the shipped recipes
    # The old run, as the code before version 2 wrote it: the recipe resolved with nnAudio, no version anywhere.
    code, _, err = avgen_in_process(capsys, "run", str(recipe), "--out", str(tmp_path / "old"),
                                    "--set", "representation.version=1")
    assert code == 0, err
    old = tmp_path / "old" / "tiny"
    written = tomllib.loads((old / "recipe.toml").read_text())["representation"]
    from avgen_audio import StftParams

    assert written == {"name": "stft", **StftParams(n_iter=4, backend="nnaudio").model_dump(mode="json")}
    old_weights = checkpoint(old)

    # Resume with the recipe as it is: every stage is done, nothing is refused as "a different recipe".
    code, _, err = avgen_in_process(capsys, "run", str(recipe), "--out", str(tmp_path / "old"))
    assert code == 0, err
    assert sum("done earlier, skipped" in line for line in err) == 6
    # Training the old run again from scratch gives the same weights, bit for bit: its targets are nnAudio's.
    shutil.rmtree(old / "checkpoints")
    code, _, err = avgen_in_process(capsys, "run", str(recipe), "--out", str(tmp_path / "old"), "--only", "fit")
    assert code == 0, err
    again = checkpoint(old)
    assert again.keys() == old_weights.keys() and all(torch.equal(again[k], old_weights[k]) for k in again)
    assert tomllib.loads((old / "recipe.toml").read_text())["representation"] == written

    # A new run of the same recipe encodes with torch.fft, and its weights differ (the check above can tell).
    code, _, err = avgen_in_process(capsys, "run", str(recipe), "--out", str(tmp_path / "new"))
    assert code == 0, err
    new_written = tomllib.loads((tmp_path / "new" / "tiny" / "recipe.toml").read_text())["representation"]
    assert (new_written["version"], new_written["backend"]) == ("2", "torch")
    new_weights = checkpoint(tmp_path / "new" / "tiny")
    assert any(not torch.equal(new_weights[k], old_weights[k]) for k in new_weights)
    # --fresh starts the old run over as a new one
    fresh = tmp_path / "fresh"
    shutil.copytree(tmp_path / "old", fresh)
    code, _, err = avgen_in_process(capsys, "run", str(recipe), "--out", str(fresh), "--fresh", "--only", "prepare")
    assert code == 0, err
    assert tomllib.loads((fresh / "tiny" / "recipe.toml").read_text())["representation"]["backend"] == "torch"

    # Loading the old run (avgen generate --run) keeps nnAudio.
    wave = waves()
    loaded = avgen.load(old, device="cpu")
    assert loaded.representation.params.backend == "nnaudio"
    assert torch.equal(loaded.representation.magnitude(wave), nnaudio_oracle(loaded.representation, wave))

    # So does its exported model folder, also when its config.json names no backend.
    folder = tmp_path / "model"
    code, _, err = avgen_in_process(capsys, "export", str(old), str(folder), "--no-exemplars")
    assert code == 0, err
    assert avgen.load(folder, device="cpu").representation.params.backend == "nnaudio"
    config = json.loads((folder / "config.json").read_text())
    for section in (config["representation"], config["recipe"]["representation"]):
        del section["backend"]
    (folder / "config.json").write_text(json.dumps(config))
    sums = (folder / "SHA256SUMS").read_text().splitlines()
    digest = hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()
    (folder / "SHA256SUMS").write_text("".join(f"{digest}  config.json\n" if line.endswith("  config.json") else line + "\n"
                                               for line in sums))
    model = avgen.load(folder, device="cpu")
    assert model.representation.params.backend == "nnaudio"
    assert torch.equal(model.representation.magnitude(wave), nnaudio_oracle(model.representation, wave))


def test_the_feature_cache_never_serves_the_other_backends_representation(tmp_path, avgen_home):
    """A split's cache entry holds the waves and visual features, which no backend touches; each run's targets
    are its own backend's STFT of those waves, never the other's."""
    from rich.console import Console

    from avgen._core.build import build_dataset, build_encoder, build_representation
    from avgen._core.cache import FeatureCache
    from avgen._core.featurize import Featurizer
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE.format(root=tmp_path / "data"))
    cache = FeatureCache(tmp_path / "cache")
    reps, infos = {}, {}
    for backend in ("nnaudio", "torch", "nnaudio"):
        resolved = load_recipe(recipe, [f"representation.backend={backend}"])
        dataset = build_dataset(resolved)
        dataset.prepare(None)
        representation = build_representation(resolved, torch.device("cpu"))
        featurizer = Featurizer(resolved, dataset, build_encoder(resolved, torch.device("cpu")), representation,
                                torch.device("cpu"), Console(quiet=True), cache)
        split, info = featurizer.featurize_split("train")
        oracle = nnaudio_oracle if backend == "nnaudio" else torch_oracle
        assert torch.equal(split.rep, oracle(representation, split.wave)), backend
        reps.setdefault(backend, split.rep.clone())
        infos.setdefault(backend, []).append(info)
    assert infos["nnaudio"][0]["encoded"] > 0 and infos["torch"][0]["from_cache"] == infos["torch"][0]["clips"]
    assert not torch.equal(reps["nnaudio"], reps["torch"])
    assert torch.allclose(reps["nnaudio"], reps["torch"], rtol=0, atol=1e-5 * float(reps["torch"].abs().max()))
    from avgen._core.tensorfile import read_verified

    for entry in (tmp_path / "cache").glob("*/*.safetensors"):
        assert set(read_verified(entry)[0]) <= {"wave", "features", "label"}
