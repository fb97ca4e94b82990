"""One smoke test over every registered encoder: shape, dtype, batch invariance, determinism."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import avgen
from avgen import Encoder

TIMM_DEFAULT = "resnet50"  # TimmParams.model default
SIZE = 32  # the smallest input the ResNets and EfficientNets accept: keeps ResNet-152/200-D fast
SMALLEST = {"alexnet": 64}  # AlexNet's five strided stages need at least 63 px
ENCODERS = [c.name for c in avgen.list_components("encoder")]  # built-in and installed third-party
OURS = [c.name for c in avgen.list_components("encoder") if c.plugin == "vision"]
_built: dict[str, Encoder] = {}


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def build(name: str, **params) -> Encoder:
    """A random-weight encoder at SIZE px, as far as its Params have those keys (weights = 'none' warns)."""
    fields = avgen.get_component("encoder", name).params.model_fields
    size = SMALLEST.get(name, SIZE)
    small = {k: v for k, v in {"weights": "none", "input_size": size}.items() if k in fields}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return avgen.create("encoder", name, context={"device": torch.device("cpu")}, **small, **params)


def shared(name: str) -> Encoder:
    if name not in _built:
        _built[name] = build(name)
    return _built[name]


def frames(count: int, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, size, size, 3), dtype=torch.uint8, generator=gen)


def test_the_paper_encoders_are_registered():
    assert {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "alexnet", "resnet200d", "timm",
            "efficientnet_lite0"} <= set(ENCODERS)


@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_output_shape_dtype_and_protocol(name):
    encoder = shared(name)
    assert isinstance(encoder, Encoder)
    assert encoder.fps > 0
    out = encoder.encode(frames(3, size=encoder.input_size))
    assert out.shape == (3, encoder.dim) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert out.std() > 0  # not a constant: the frames reach the features
    card_dim = avgen.get_component("encoder", name).card.dim
    if isinstance(card_dim, int):
        assert encoder.dim == card_dim


@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_is_batch_invariant(name):
    encoder = shared(name)
    x = frames(3, size=encoder.input_size, seed=1)
    together = encoder.encode(x)
    one_by_one = torch.cat([encoder.encode(x[i : i + 1]) for i in range(len(x))])
    scale = together.abs().max().clamp_min(1e-6)
    assert torch.allclose(together, one_by_one, rtol=1e-4, atol=1e-4 * float(scale))


@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_is_deterministic_across_builds(name):
    x = frames(2, size=shared(name).input_size, seed=2)
    first = shared(name).encode(x)
    again = shared(name).encode(x)
    assert torch.equal(first, again)
    if name in ("resnet18", "efficientnet_lite0"):  # rebuilding the big ones costs seconds
        rebuilt = build(name).encode(x)  # weights = 'none' is seeded: the same random CNN every time
        assert torch.equal(first, rebuilt)


def test_frames_of_another_size_are_resized():
    encoder = shared("resnet18")
    big = frames(2, size=96, seed=3)
    resized = F.interpolate(big.permute(0, 3, 1, 2).float(), size=(SIZE, SIZE), mode="bilinear", antialias=True)
    resized = resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    direct = encoder.encode(big)
    assert direct.shape == (2, encoder.dim)
    # uint8 rounding of the reference moves each pixel by < 0.5/255: features agree closely
    assert torch.allclose(direct, encoder.encode(resized), rtol=2e-2, atol=2e-2 * float(direct.abs().max()))


def test_empty_input_and_bad_input():
    encoder = shared("resnet18")
    assert encoder.encode(torch.zeros(0, SIZE, SIZE, 3, dtype=torch.uint8)).shape == (0, encoder.dim)
    with pytest.raises(ValueError, match="uint8"):
        encoder.encode(torch.zeros(1, SIZE, SIZE, 3))
    with pytest.raises(ValueError, match="uint8"):
        encoder.encode(torch.zeros(1, 3, SIZE, SIZE, dtype=torch.uint8))


def test_random_weights_warn_loudly(caplog):
    with pytest.warns(UserWarning, match="RANDOMLY INITIALISED"):
        encoder = avgen.create("encoder", "resnet18", weights="none", input_size=SIZE)
    assert "RANDOMLY INITIALISED" in caplog.text
    assert encoder.weights_source.startswith("none")


def test_explicit_batch_size_and_bf16_give_the_fp32_features():
    x = frames(6, seed=4)
    reference = shared("resnet18").encode(x)
    assert torch.allclose(build("resnet18", batch_size=4).encode(x), reference, rtol=1e-4, atol=1e-4 * float(reference.abs().max()))
    bf16 = build("resnet18", precision="bf16").encode(x)
    assert bf16.dtype == torch.float32
    cosine = F.cosine_similarity(bf16, reference, dim=1)
    assert (cosine > 0.99).all(), cosine


def test_unknown_timm_model_is_one_clear_error():
    with pytest.raises(avgen.AvgenError, match="timm has no model 'resnet5O'.*resnet50"):
        build("timm", model="resnet5O")


@pytest.mark.parametrize("name", OURS)
def test_frames_are_normalised_with_the_card_mean_and_std(name):
    encoder = shared(name)
    card = avgen.get_component("encoder", name).card
    mean, std = card.mean, card.std
    if isinstance(mean, str):  # the generic timm encoder takes its model's pretrained_cfg
        import timm

        cfg = timm.create_model(TIMM_DEFAULT).pretrained_cfg
        mean, std = cfg["mean"], cfg["std"]
    x = frames(2, size=encoder.input_size, seed=5)
    images = (x.permute(0, 3, 1, 2).double() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.inference_mode():
        expected = encoder.model(images.float().contiguous())
    got = encoder.encode(x)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_generic_timm_encoder_takes_mean_and_std_from_its_model():
    import timm

    cfg = timm.create_model("tf_efficientnet_lite0").pretrained_cfg
    assert tuple(cfg["mean"]) == (0.5, 0.5, 0.5)  # unlike the ImageNet default of most models
    encoder = build("timm", model="tf_efficientnet_lite0")
    x = frames(2, size=encoder.input_size, seed=6)
    images = (x.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    with torch.inference_mode():
        expected = encoder.model(images.contiguous())
    got = encoder.encode(x)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0"])
def test_after_freeze_after_frames_fp32_runs_a_frozen_network_with_the_eager_features(name, monkeypatch):
    """fp32 on the CPU: the first ``freeze_after`` frames run eagerly, then a TorchScript network frozen for
    inference, checked against eager on two frames; its features equal eager ones within float rounding.
    bf16 autocast keeps the eager network; a network TorchScript cannot trace stays eager."""
    import avgen_vision.encoder as vision

    x = frames(10, seed=5)
    eager = build(name)
    eager.freeze_after = 10 ** 9
    reference = eager.encode(x)
    encoder = build(name, batch_size=4)
    encoder.freeze_after = 4
    first = encoder.encode(x)  # one eager batch of 4, then frozen for the other 6 frames
    assert encoder._frozen and encoder._eager_frames == 4
    second = encoder.encode(x)  # all frozen
    tolerance = dict(rtol=1e-4, atol=1e-4 * float(reference.abs().max()))
    assert torch.allclose(first, reference, **tolerance) and torch.allclose(second, reference, **tolerance)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # featurize's bf16: the eager network under autocast
        calls = []
        monkeypatch.setattr(encoder, "_frozen", lambda batch: calls.append(batch) or pytest.fail("frozen under autocast"))
        encoder.encode(x)
    assert not calls

    def untraceable(*args, **kwargs):
        raise RuntimeError("TorchScript cannot trace this")

    monkeypatch.setattr(vision.torch.jit, "trace", untraceable)
    fallback = build(name, batch_size=4)
    fallback.freeze_after = 0
    assert torch.allclose(fallback.encode(x), reference, **tolerance) and fallback._frozen is False
