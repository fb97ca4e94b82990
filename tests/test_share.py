"""`avgen export` and `avgen generate --model`: a model folder that travels alone; `--material` forces the class."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

import avgen
from conftest import avgen_in_process, error_lines, run_avgen

FOLDER_FILES = {"README.md", "LICENSE.md", "SHA256SUMS", "config.json", "model.safetensors", "exemplars.safetensors",
                "metrics.json", "recipe.toml"}


@pytest.fixture(scope="module")
def exported(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the shared tiny run directory, its exported model folder), exported by the real `python -m avgen export`
    in a subprocess (the other export tests run the CLI in this process)."""
    out = tmp_path_factory.mktemp("share") / "model"
    proc = run_avgen("export", str(tiny_run), str(out), env={"AVGEN_HOME": str(tiny_run.parents[1] / "home")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == str(out)
    return tiny_run, out


def test_export_writes_the_hub_layout_with_the_sha256_of_every_file(exported: tuple[Path, Path]) -> None:
    run, model = exported
    assert {p.name for p in model.iterdir()} == FOLDER_FILES
    sums = dict(reversed(line.split("  ", 1)) for line in (model / "SHA256SUMS").read_text().splitlines())
    assert set(sums) == FOLDER_FILES - {"SHA256SUMS"}
    for name, digest in sums.items():
        assert hashlib.sha256((model / name).read_bytes()).hexdigest() == digest, name
    # the weights are the run's best checkpoint (less the optimiser state), read with safetensors alone
    best = {k: v for k, v in load_file(str(run / "checkpoints" / "best.safetensors")).items()
            if not k.startswith("__optimizer__.")}
    weights = load_file(str(model / "model.safetensors"))
    assert weights.keys() == best.keys() and "base_samples" in weights
    for key in best:
        assert torch.equal(weights[key], best[key]), key
    config = json.loads((model / "config.json").read_text())
    assert config["class_names"] == ["carpet", "ceramic", "cloth"] and config["generator"]["name"] == "can_lstm"
    assert config["exemplars"]["count"] == int(json.loads((run / "dataset.json").read_text())["splits"]["train"])
    card = (model / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: avgen\n") and card.count("\n---\n") == 1
    metrics = json.loads((run / "metrics.json").read_text())["recall_at_k"]
    assert f"| recall_at_k R@1 | {metrics['R@1']:.4g} |" in card
    assert "| generator | can_lstm | lstm | - | MIT |" in card and "generated (MIT)" in card
    assert "| representation | stft | audio | - | MIT (the avgen distribution's) |" in card  # no card licence: the code's
    assert "| generator | can_lstm | lstm | - | MIT |" in (model / "LICENSE.md").read_text()
    example = importlib.metadata.version("avgen-plugin-example")  # its mean_color encoder
    assert f"pip install 'avgen=={avgen.__version__}' 'avgen-plugin-example=={example}'\n" in card
    # the training machine's folders are not published
    for path in model.iterdir():
        assert str(run.parents[1]).encode() not in path.read_bytes(), path.name


def test_the_hub_client_reads_the_model_card(exported: tuple[Path, Path]) -> None:
    """huggingface_hub (installed with timm) parses the card's metadata; nothing is uploaded."""
    hub = pytest.importorskip("huggingface_hub")
    data = hub.ModelCard.load(exported[1] / "README.md").data.to_dict()
    assert data["library_name"] == "avgen" and data["license"] == "other" and "video-to-audio" in data["tags"]
    assert (exported[1] / data["license_link"]).is_file()


def test_generate_from_a_copied_folder_alone(exported: tuple[Path, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Copy the exported folder elsewhere and take the run, its data and its cache away: --model (a subprocess)
    gives the same sound as --run gave (in this process, to save two start-ups)."""
    run, model = exported
    base = run.parents[1]
    video = tmp_path / "clip.mp4"
    shutil.copyfile(sorted((base / "data").glob("*_denoised.mp4"))[0], video)
    monkeypatch.setenv("AVGEN_HOME", str(base / "home"))
    for mode in ("--raw", "--exemplar"):
        code, _, lines = avgen_in_process(capsys, "generate", str(video), "--run", str(run), mode,
                                          "-o", str(tmp_path / f"by_run{mode}"))
        assert code == 0, lines
    monkeypatch.delenv("AVGEN_HOME")

    fresh = tmp_path / "machine_b"
    shutil.copytree(model, fresh / "model")
    away = tmp_path / "away"
    base.rename(away)  # the run, the dataset, the feature cache and the original folder are gone (put back below)
    try:
        env = {"AVGEN_HOME": str(fresh / "home")}
        for mode in ("--raw", "--exemplar"):
            proc = run_avgen("generate", str(video), "--model", str(fresh / "model"), mode,
                             "-o", str(tmp_path / f"by_model{mode}"), env=env, cwd=fresh)
            assert proc.returncode == 0, proc.stderr[-3000:]
    finally:
        away.rename(base)
    for mode in ("--raw", "--exemplar"):
        by_run, rate = sf.read(tmp_path / f"by_run{mode}" / "clip.avgen.wav")
        by_model, _ = sf.read(tmp_path / f"by_model{mode}" / "clip.avgen.wav")
        assert by_model.shape == by_run.shape and rate == 22050
        np.testing.assert_allclose(by_model, by_run, atol=3 / 32768)  # 16-bit exemplar audio: a step or two
        assert np.abs(by_run).max() > 1e-3
    record = json.loads((tmp_path / "by_model--exemplar" / "clip.avgen.json").read_text())
    expected = json.loads((tmp_path / "by_run--exemplar" / "clip.avgen.json").read_text())
    assert [w["clip"] for w in record["provenance"]] == [w["clip"] for w in expected["provenance"]]
    assert not (fresh / "data").exists() and not (fresh / "home" / "cache").exists()  # no data made, nothing cached


def damage(model: Path, case: str) -> None:
    if case == "flipped_weight_byte":
        data = bytearray((model / "model.safetensors").read_bytes())
        data[-5] ^= 0x01
        (model / "model.safetensors").write_bytes(bytes(data))
    elif case == "edited_config":
        text = (model / "config.json").read_text()
        (model / "config.json").write_text(text.replace('"cloth"', '"wood"'))
    elif case == "missing_exemplars":
        (model / "exemplars.safetensors").unlink()
    elif case == "missing_sums":
        (model / "SHA256SUMS").unlink()
    elif case == "truncated_weights":
        data = (model / "model.safetensors").read_bytes()
        (model / "model.safetensors").write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("case,expected", [
    ("flipped_weight_byte", "model.safetensors: SHA-256 differs from SHA256SUMS"),
    ("edited_config", "config.json: SHA-256 differs from SHA256SUMS"),
    ("missing_exemplars", "incomplete model folder, exemplars.safetensors is missing"),
    ("missing_sums", "incomplete model folder, SHA256SUMS is missing"),
    ("truncated_weights", "model.safetensors: SHA-256 differs from SHA256SUMS"),
])
def test_a_tampered_or_partial_folder_is_refused_in_one_line(exported: tuple[Path, Path], tmp_path: Path, case: str,
                                                             expected: str, capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    run, model = exported
    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    damage(copy, case)
    monkeypatch.setenv("AVGEN_HOME", str(tmp_path / "home"))
    video = sorted((run.parents[1] / "data").glob("*_denoised.mp4"))[0]
    code, _, lines = avgen_in_process(capsys, "generate", str(video), "--model", str(copy), "-o", str(tmp_path / "out"))
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], lines
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,expected", [
    (("export", "{tmp}/no_run", "{tmp}/out"), "no such run directory"),
    (("export", "{run}", "{model}"), "exists and is not an empty folder"),
    (("generate", "{video}"), "give the model with --run RUN_DIR or --model MODEL_DIR"),
    (("generate", "{video}", "--run", "{run}", "--model", "{model}"), "exactly one"),
    (("generate", "{video}", "--model", "{run}"), "this is a run directory; use --run"),
    (("generate", "{video}", "--model", "{tmp}"), "not a model folder that an installed plugin reads"),
    (("generate", "{video}", "--model", "{model}", "--material", "wood"), "'wood' is not a class of this model; its classes: carpet, ceramic, cloth"),
])
def test_bad_export_and_model_input_is_one_line_exit_2(exported: tuple[Path, Path], tmp_path: Path, args: tuple[str, ...],
                                                       expected: str, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    run, model = exported
    monkeypatch.setenv("AVGEN_HOME", str(tmp_path / "home"))
    video = sorted((run.parents[1] / "data").glob("*_denoised.mp4"))[0]
    values = {"tmp": tmp_path, "run": run, "model": model, "video": video}
    code, _, lines = avgen_in_process(capsys, *(a.format(**values) for a in args))
    assert code == 2 and len(lines) >= 1, lines
    assert lines[-1].startswith("error:") and expected in lines[-1], lines
    assert [line for line in lines if line.startswith("error")] == [lines[-1]]


def test_exporting_exemplars_without_the_training_clips_is_one_line(exported: tuple[Path, Path], tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from test_generate import copy_with_recipe_value

    run = copy_with_recipe_value(exported[0], tmp_path / "run", "data", "root", str(tmp_path / "gone"))
    monkeypatch.setenv("AVGEN_HOME", str(tmp_path / "home"))  # an empty cache: the clips must come from the data
    code, _, lines = avgen_in_process(capsys, "export", str(run), str(tmp_path / "model"))
    assert code == 2 and len(lines) == 1, lines
    assert "exporting its exemplar sounds needs the run's training clips" in lines[0] and "--no-exemplars" in lines[0]
    assert f"'{tmp_path / 'gone'}' is missing" in lines[0] and not (tmp_path / "model").exists()
    assert avgen_in_process(capsys, "export", str(run), str(tmp_path / "model"), "--no-exemplars")[0] == 0


def test_export_without_exemplars_asks_for_a_library(exported: tuple[Path, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    run, _ = exported
    monkeypatch.setenv("AVGEN_HOME", str(run.parents[1] / "home"))
    code, out, _ = avgen_in_process(capsys, "export", str(run), str(tmp_path / "light"), "--no-exemplars")
    assert code == 0 and out.strip() == str(tmp_path / "light")
    assert {p.name for p in (tmp_path / "light").iterdir()} == FOLDER_FILES - {"exemplars.safetensors"}
    video = sorted((run.parents[1] / "data").glob("*_denoised.mp4"))[0]
    code, _, lines = avgen_in_process(capsys, "generate", str(video), "--model", str(tmp_path / "light"), "--exemplar",
                                      "-o", str(tmp_path / "out"))
    assert code == 2 and "exported without exemplar sounds; give --library SFX_DIR" in lines[-1]


# ---------------------------------------------------------------- --material


def test_class_outputs_add_the_forced_class_base_sample(example_plugin: None) -> None:
    """s'(forced c) - s'(free) = A_c - A_argmax(p), checked against the base-sample buffer; p becomes one-hot."""
    shape = avgen.GeneratorShape(feature_dim=6, rep_dim=5, steps=4, num_classes=3)
    model = avgen.create("generator", "can_lstm", avgen.BuildContext(shape=shape), hidden=8).eval()
    g = torch.Generator().manual_seed(0)
    model.set_base_samples(torch.rand(9, 5, 4, generator=g) * 10, torch.arange(9) % 3)
    features = torch.randn(6, 7, 6, generator=g)
    labels = torch.tensor([0, 1, 2, 2, 1, 0])
    with torch.no_grad():
        free, forced = model(features), model.class_outputs(features, labels)
    base = model.base_samples
    predicted = free["probs"].argmax(-1)
    torch.testing.assert_close(forced["rep"] - free["rep"], base[labels] - base[predicted], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(forced["probs"], torch.eye(3)[labels])
    torch.testing.assert_close(forced["video_probs"], free["probs"])
    assert torch.equal(model.class_probabilities(forced).argmax(-1), labels)


def test_a_generator_without_classes_refuses_material(example_plugin: None) -> None:
    shape = avgen.GeneratorShape(feature_dim=6, rep_dim=5, steps=4, num_classes=3)
    model = avgen.create("generator", "owens_lstm", avgen.BuildContext(shape=shape), hidden=8)
    with pytest.raises(avgen.AvgenError, match="has no class to force"):
        model.class_outputs(torch.zeros(1, 7, 6), torch.zeros(1, dtype=torch.long))


def test_material_changes_the_predicted_class_and_the_sound(exported: tuple[Path, Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Without and with --material, both through the CLI entry point in this process (the real `python -m avgen
    generate --model` runs in test_generate_from_a_copied_folder_alone)."""
    run, model = exported
    video = sorted((run.parents[1] / "data").glob("*_denoised.mp4"))[0]
    monkeypatch.setenv("AVGEN_HOME", str(tmp_path / "home"))
    code, _, lines = avgen_in_process(capsys, "generate", str(video), "--model", str(model), "-o", str(tmp_path / "free"))
    assert code == 0, lines
    before = json.loads((tmp_path / "free" / f"{video.stem}.avgen.json").read_text())
    other = next(name for name in ("carpet", "ceramic", "cloth") if name != before["predicted"])
    code, _, lines = avgen_in_process(capsys, "generate", str(video), "--model", str(model), "--material", other,
                                      "-o", str(tmp_path / "forced"))
    assert code == 0, lines[-20:]
    after = json.loads((tmp_path / "forced" / f"{video.stem}.avgen.json").read_text())
    assert after["predicted"] == other == after["material"] and after["classes"][other] == 1.0
    wave_free, _ = sf.read(tmp_path / "free" / f"{video.stem}.avgen.wav")
    wave_forced, _ = sf.read(tmp_path / "forced" / f"{video.stem}.avgen.wav")
    assert np.abs(wave_forced - wave_free).max() > 1e-2  # another base sample: another sound


def test_without_the_share_plugin_a_model_folder_is_one_line(exported: tuple[Path, Path], tmp_path: Path) -> None:
    run, model = exported
    video = sorted((run.parents[1] / "data").glob("*_denoised.mp4"))[0]
    # a subprocess: AVGEN_LOAD_PLUGINS is read once, when a process first loads its plugins
    proc = run_avgen("generate", str(video), "--model", str(model), "-o", str(tmp_path / "x"),
                     env={"AVGEN_HOME": str(tmp_path / "home"), "AVGEN_LOAD_PLUGINS": "audio,lstm,example"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "not a model folder that an installed plugin reads" in error_lines(proc)[-1]


def test_an_export_interrupted_before_the_end_leaves_no_folder(exported: tuple[Path, Path], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while the last file is written: exit 130, no OUT_DIR and no staging folder left behind."""
    import avgen_share.export

    run, _ = exported
    monkeypatch.setenv("AVGEN_HOME", str(run.parents[1] / "home"))

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(avgen_share.export, "write_sums", interrupted)
    code, _, lines = avgen_in_process(capsys, "export", str(run), str(tmp_path / "model"))
    assert code == 130 and lines[-1].startswith("interrupted"), lines
    assert list(tmp_path.iterdir()) == []


def test_the_folder_records_where_each_component_comes_from_and_names_a_missing_one(
        exported: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from avgen_share.folder import write_sums

    run, model = exported
    components = json.loads((model / "config.json").read_text())["components"]
    assert components["generator"] == {"name": "can_lstm", "plugin": "lstm", "distribution": "avgen",
                                       "version": avgen.__version__}
    assert components["encoder"]["distribution"] == "avgen-plugin-example"  # mean_color comes from the example
    assert "index" not in components  # no [index]: the core's exact default, nothing to install
    # the same folder, as exported on a machine with a plugin this one lacks
    moved = tmp_path / "model"
    shutil.copytree(model, moved)
    config = json.loads((moved / "config.json").read_text())
    config["components"]["generator"] = {"name": "gru_regressor", "plugin": "gru", "distribution": "avgen-gru",
                                         "version": "0.3"}
    (moved / "config.json").write_text(json.dumps(config))
    write_sums(moved, sorted(p.name for p in moved.iterdir() if p.name != "SHA256SUMS"))
    video = sorted((run.parents[1] / "data").glob("*_denoised.mp4"))[0]
    code, _, lines = avgen_in_process(capsys, "generate", str(video), "--model", str(moved), "-o", str(tmp_path / "out"))
    assert code == 2 and len(lines) == 1, lines
    assert "generator 'gru_regressor'" in lines[0] and "pip install 'avgen-gru==0.3'" in lines[0], lines


def test_a_recipe_index_is_recorded_with_its_plugin(tiny_run: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    """A model whose recipe names a retrieval index: the folder records where that index comes from (without one,
    the core's default exact index needs nothing recorded, as the other tests' folder shows)."""
    loaded = avgen.saved_model_of_run

    def with_an_index(*args, **kwargs):  # the run as if its recipe had named an [index] section when it trained
        saved = loaded(*args, **kwargs)
        saved.meta["recipe"]["index"] = {"name": "exact"}
        return saved

    monkeypatch.setattr(avgen, "saved_model_of_run", with_an_index)
    monkeypatch.setenv("AVGEN_HOME", str(tiny_run.parents[1] / "home"))
    code, _, err = avgen_in_process(capsys, "export", str(tiny_run), str(tmp_path / "model"), "--no-exemplars")
    assert code == 0, err
    components = json.loads((tmp_path / "model" / "config.json").read_text())["components"]
    assert components["index"] == {"name": "exact", "plugin": "retrieval", "distribution": "avgen",
                                   "version": avgen.__version__}


def test_the_card_names_the_pip_install_of_every_plugin_distribution() -> None:
    from avgen_share.card import install_line

    components = {"generator": {"name": "gru_regressor", "plugin": "gru", "distribution": "avgen-gru", "version": "0.3.1"},
                  "encoder": {"name": "efficientnet_lite0", "plugin": "vision", "distribution": "avgen", "version": "0.1.0"},
                  "representation": {"name": "old", "plugin": "?", "distribution": "?", "version": "?"}}
    assert install_line({"components": components}) == f"pip install 'avgen=={avgen.__version__}' 'avgen-gru==0.3.1'"
    assert install_line({}) == f"pip install 'avgen=={avgen.__version__}'"  # folders exported before it was recorded
