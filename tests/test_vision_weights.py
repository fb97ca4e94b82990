"""Encoder weights: state-dict files, the torch hub and Hugging Face caches, and the offline error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

import avgen
from avgen_vision import catalog

SIZE = 64
NO_NETWORK = {  # every client (urllib, httpx, requests) sees a proxy that refuses connections
    "HF_HUB_OFFLINE": "1",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "ALL_PROXY": "http://127.0.0.1:9",
}


@pytest.fixture(autouse=True)
def no_network(monkeypatch, tmp_path):
    """No test here may download: proxies refuse, and the caches start empty in tmp_path."""
    for key, value in NO_NETWORK.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


def random_resnet18() -> torchvision.models.ResNet:
    """A torchvision ResNet-18 with random weights and non-trivial batch-norm statistics."""
    torch.manual_seed(123)
    model = torchvision.models.resnet18(weights=None)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def frames(count: int = 3, size: int = SIZE) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    return torch.randint(0, 256, (count, size, size, 3), dtype=torch.uint8, generator=gen)


def torchvision_features(model: torch.nn.Module, x: torch.Tensor, weights_enum) -> torch.Tensor:
    """The reference: torchvision's own model, fc removed, on frames normalised with its preset's mean/std."""
    preset = weights_enum.transforms()
    mean = torch.tensor(preset.mean).view(1, 3, 1, 1)
    std = torch.tensor(preset.std).view(1, 3, 1, 1)
    images = (x.permute(0, 3, 1, 2).float() / 255 - mean) / std
    model.fc = torch.nn.Identity()
    with torch.inference_mode():
        return model(images.contiguous())


def assert_same_features(got: torch.Tensor, expected: torch.Tensor) -> None:
    # channels-last and NCHW convolutions sum in different orders: equal to float32 rounding
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "alexnet"])
def test_card_names_the_file_torchvision_downloads(arch):
    url = torchvision.models.get_model_weights(arch).DEFAULT.url
    card = avgen.get_component("encoder", arch).card
    assert card.weights.endswith("checkpoints/" + url.rsplit("/", 1)[-1])


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_resnet18_state_dict_file_gives_torchvision_features(tmp_path, suffix):
    model = random_resnet18()
    path = tmp_path / f"resnet18{suffix}"
    state = model.state_dict()
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    encoder = avgen.create("encoder", "resnet18", weights=str(path), input_size=SIZE)
    assert encoder.weights_source == str(path)
    x = frames()
    expected = torchvision_features(model, x, torchvision.models.ResNet18_Weights.IMAGENET1K_V1)
    assert_same_features(encoder.encode(x), expected)


def test_a_headless_state_dict_without_fc_loads_too(tmp_path):
    model = random_resnet18()
    path = tmp_path / "backbone.pt"
    torch.save({"state_dict": {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}}, path)
    encoder = avgen.create("encoder", "resnet18", weights=str(path), input_size=SIZE)
    x = frames()
    assert_same_features(encoder.encode(x), torchvision_features(model, x, torchvision.models.ResNet18_Weights.IMAGENET1K_V1))


def test_imagenet_weights_come_from_the_torch_hub_cache(tmp_path):
    model = random_resnet18()
    cached = Path(torch.hub.get_dir()) / "checkpoints" / "resnet18-f37072fd.pth"
    assert cached.is_relative_to(tmp_path)  # TORCH_HOME points into tmp_path
    cached.parent.mkdir(parents=True)
    torch.save(model.state_dict(), cached)
    encoder = avgen.create("encoder", "resnet18", weights="imagenet", input_size=SIZE)
    assert encoder.weights_source == str(cached)
    x = frames()
    assert_same_features(encoder.encode(x), torchvision_features(model, x, torchvision.models.ResNet18_Weights.IMAGENET1K_V1))


def test_alexnet_gives_the_fc7_activation(tmp_path):
    torch.manual_seed(5)
    model = torchvision.models.alexnet(weights=None).eval()
    path = tmp_path / "alexnet.pth"
    torch.save(model.state_dict(), path)
    encoder = avgen.create("encoder", "alexnet", weights=str(path), input_size=SIZE)
    assert encoder.dim == 4096
    captured = {}
    model.classifier[5].register_forward_hook(lambda module, inp, out: captured.update(fc7=out))  # ReLU after fc7
    preset = torchvision.models.AlexNet_Weights.IMAGENET1K_V1.transforms()
    x = frames(2)
    images = (x.permute(0, 3, 1, 2).float() / 255 - torch.tensor(preset.mean).view(1, 3, 1, 1)) / torch.tensor(preset.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        model(images.contiguous())
    got = encoder.encode(x)
    assert got.shape == (2, 4096)
    assert (got >= 0).all() and (got > 0).any()  # after the ReLU
    assert_same_features(got, captured["fc7"])


def test_missing_file_is_one_clear_error(tmp_path):
    with pytest.raises(avgen.AvgenError, match=r"weights file '.*nope\.pth' does not exist"):
        avgen.create("encoder", "resnet18", weights=str(tmp_path / "nope.pth"), input_size=SIZE)


class NotATensor:
    """Pickled into a file, it makes the file unloadable with weights_only=True."""


def test_a_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": NotATensor()}, path)
    with pytest.raises(avgen.AvgenError, match="cannot read weights file.*plain state dict"):
        avgen.create("encoder", "resnet18", weights=str(path), input_size=SIZE)


def test_weights_of_another_architecture_are_one_clear_error(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(avgen.AvgenError, match="do not fit the architecture.*unexpected"):
        avgen.create("encoder", "resnet18", weights=str(path), input_size=SIZE)
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    with pytest.raises(avgen.AvgenError, match="do not fit the architecture.*wrong shape"):
        avgen.create("encoder", "resnet18", weights=str(path), input_size=SIZE)


OFFLINE_SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    from pathlib import Path
    import torch, timm
    from safetensors.torch import save_file
    import avgen
    out = {}
    def error_of(name, **params):
        try:
            avgen.create("encoder", name, weights="imagenet", input_size=64, **params)
        except avgen.AvgenError as exc:
            return str(exc)
        return None
    out["torchvision"] = error_of("resnet18")
    out["timm"] = error_of("timm", model="resnet18")
    # now put a state dict into the Hugging Face cache the way huggingface_hub lays it out
    torch.manual_seed(3)
    reference = timm.create_model("resnet18", num_classes=0).eval()
    hub_id = reference.pretrained_cfg["hf_hub_id"]
    repo = Path(sys.argv[1]) / "hub" / ("models--" + hub_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)  # the hub file has a head
    save_file(state, str(snapshot / "model.safetensors"))
    encoder = avgen.create("encoder", "timm", model="resnet18", weights="imagenet", input_size=64)
    x = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    cfg = reference.pretrained_cfg
    images = (x.permute(0, 3, 1, 2).float() / 255 - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.inference_mode():
        expected = reference(images.contiguous())
    got = encoder.encode(x)
    out["hf_source"] = encoder.weights_source
    out["hf_max_diff"] = float((got - expected).abs().max() / expected.abs().max())
    print(json.dumps(out))
    """
)


def test_offline_imagenet_errors_name_the_file_and_the_hf_cache_is_used(tmp_path):
    env = {**os.environ, **NO_NETWORK, "TORCH_HOME": str(tmp_path / "torch"), "HF_HOME": str(tmp_path / "hf")}
    env.pop("NO_PROXY", None)
    env.pop("no_proxy", None)
    proc = subprocess.run(
        [sys.executable, "-c", OFFLINE_SCRIPT, str(tmp_path / "hf")], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert out["torchvision"] is not None
    assert "'resnet18-f37072fd.pth'" in out["torchvision"] and f"to '{cached}'" in out["torchvision"]
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in out["torchvision"]
    assert "\n" not in out["torchvision"]
    assert out["timm"] is not None and "model.safetensors" in out["timm"] and "huggingface.co/timm/resnet18" in out["timm"]
    assert str(tmp_path / "hf") in out["timm"]
    assert out["hf_source"].startswith(str(tmp_path / "hf")) and out["hf_source"].endswith("model.safetensors")
    assert out["hf_max_diff"] < 1e-5
    assert not cached.exists()  # nothing was downloaded


def test_every_registered_spec_has_mean_std_and_weights_on_its_card():
    for spec in catalog.SPECS:
        card = avgen.get_component("encoder", spec.name).card
        assert {"mean", "std", "weights", "license", "input_size", "fps", "dim"} <= set(card.as_dict())


def test_an_unreachable_hub_fails_at_once_instead_of_retrying(monkeypatch):
    """Offline, the Hugging Face download is not attempted (it retries for ~30 s, logging each try): one direct
    connection attempt with a short timeout, then the one-line error. Checked by what is called, not by the clock
    (a loaded machine or a slow resolver must not fail it)."""
    import socket

    import huggingface_hub

    from avgen_vision import weights

    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    attempts = []

    def unreachable(address, timeout=None, *args, **kwargs):
        attempts.append((address, timeout))
        raise OSError(101, "Network is unreachable")

    def no_download(*args, **kwargs):  # pragma: no cover - must not be called
        raise AssertionError("hf_hub_download was called although the hub is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    with pytest.raises(avgen.AvgenError, match="avgen-test/no-such-model.*could not be downloaded.*OSError"):
        weights._timm_from_hf("avgen-test/no-such-model", "encoder 'timm'")  # a repo no cache holds
    assert attempts == [(("huggingface.co", 443), attempts[0][1])] and 0 < attempts[0][1] <= 5, attempts

    monkeypatch.undo()
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(OSError):
        weights._check_reachable("avgen-test.invalid")  # RFC 2606: .invalid never resolves (a real lookup)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    weights._check_reachable("avgen-test.invalid")  # behind a proxy the client finds the way; nothing to check
