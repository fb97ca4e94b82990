"""The frozen SoundNet of the perceptual loss: folded batch norm and matmul layers equal the model as written,
the real clips' features are remembered, and precision 'auto' picks bf16 only when the loss agrees."""

from __future__ import annotations

import copy

import pytest
import torch

import avgen._core.precision as precision
from avgen_soundnet import SoundNet8
from avgen_soundnet.frozen import FIXED_CHUNK, FrozenSoundNet
from avgen_soundnet.perceptual import PerceptualParams, SoundNetPerceptual


@pytest.fixture(scope="module")
def net() -> SoundNet8:
    """A SoundNet8 with random weights and non-trivial batch-norm statistics (folding must use all four)."""
    torch.manual_seed(0)
    model = SoundNet8()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.requires_grad_(False)


def waves(count: int, seed: int, samples: int = 11025) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    decay = torch.exp(-torch.arange(samples) / 2000.0)
    return torch.randn(count, samples, generator=g) * decay * 0.3


@pytest.mark.parametrize("layer", ["conv5", "conv7"])
@pytest.mark.parametrize("samples", [11025, 44100])  # 0.5 s (conv6/conv7 as matmul) and 2 s (more steps)
def test_folded_features_and_gradients_equal_the_model_as_written(net, layer, samples):
    """In float64 (the fold is exact algebra); in float32 the features agree to rounding, while the gradient
    may route through the other side of a ReLU or max-pool near-tie, so it is compared in float64 only."""
    wave = waves(3, 1, samples)
    with torch.no_grad():
        torch.testing.assert_close(FrozenSoundNet(net, layer)(wave), net.features(wave, layer), rtol=1e-4, atol=1e-5)
    double = copy.deepcopy(net).double()
    plain_in, folded_in = wave.double().requires_grad_(True), wave.double().requires_grad_(True)
    expected = double.features(plain_in, layer)
    got = FrozenSoundNet(double, layer)(folded_in)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    weights = torch.randn(expected.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    (expected * weights).sum().backward()
    (got * weights).sum().backward()
    torch.testing.assert_close(folded_in.grad, plain_in.grad, rtol=1e-9, atol=1e-12)


def test_real_features_are_remembered_per_waveform(net, monkeypatch):
    frozen = FrozenSoundNet(net, "conv7")
    calls = []
    original = FrozenSoundNet.__call__

    def counting(self, wave):
        calls.append(wave.shape[0])
        return original(self, wave)

    monkeypatch.setattr(FrozenSoundNet, "__call__", counting)
    first, second = waves(4, 3), waves(2, 4)
    a = frozen.fixed(first)
    b = frozen.fixed(torch.cat([second, first[1:3]]))  # two new rows, two seen ones
    assert calls == [FIXED_CHUNK, FIXED_CHUNK]  # the 4 new rows, then the 2 new rows, each filled out to one chunk
    torch.testing.assert_close(b[2:], a[1:3], rtol=0, atol=0)
    torch.testing.assert_close(b, net.features(torch.cat([second, first[1:3]]), "conv7"), rtol=1e-4, atol=1e-5)
    small = FrozenSoundNet(net, "conv7", memo_bytes=4096 + 100)  # room for one clip's 1024 floats
    small.fixed(first)
    assert len(small._memo) == 1


def test_a_rows_features_do_not_depend_on_the_batch_that_first_held_it(net):
    """A resumed run's batches first hold other rows than the uninterrupted run's did: the remembered features must be
    the same bits (the convolution's sums differ in the last bits with the batch size)."""
    rows = waves(41, 9)
    alone = FrozenSoundNet(net, "conv7").fixed(rows[:6])  # first seen in a batch of 6 ...
    among = FrozenSoundNet(net, "conv7").fixed(torch.cat([rows[6:], rows[:6]]))[-6:]  # ... or of 41, last
    assert torch.equal(alone, among)


def test_loss_equals_the_plain_loss(net):
    generated, real = waves(4, 5), waves(4, 6)
    plain = SoundNetPerceptual(net, PerceptualParams(), 22050, fast=False)
    fast = SoundNetPerceptual(net, PerceptualParams(precision="fp32"), 22050)
    for _ in range(2):  # the second call takes the targets from the memo
        assert float(fast.perceptual(generated, real)) == pytest.approx(float(plain.perceptual(generated, real)), rel=1e-5)


def test_auto_precision_uses_bf16_only_where_native_and_the_loss_agrees(net, monkeypatch):
    generated, real = waves(4, 7), waves(4, 8)
    monkeypatch.setattr(precision, "native_bf16", lambda device: (False, "CPU has neither"))
    loss = SoundNetPerceptual(net, PerceptualParams(), 22050)
    loss.perceptual(generated, real)
    assert loss.precision.precision == "fp32" and loss.precision.value is None
    monkeypatch.setattr(precision, "native_bf16", lambda device: (True, "patched"))  # bf16 is emulated where not native
    loss = SoundNetPerceptual(net, PerceptualParams(), 22050)
    value = loss.perceptual(generated, real)
    assert loss.precision.value is not None and loss.gradient_cosine is not None
    assert loss.precision.precision == ("bf16" if loss.precision.value <= 0.01 else "fp32")
    fp32 = SoundNetPerceptual(net, PerceptualParams(precision="fp32"), 22050).perceptual(generated, real)
    assert float(value) == pytest.approx(float(fp32), rel=0.01)  # either way within the 1 % the check allows
    identical = SoundNetPerceptual(net, PerceptualParams(), 22050)
    identical.perceptual(real, real)  # fp32 loss 0: bf16 would invent a loss, so the check keeps fp32
    assert identical.precision.precision == "fp32" or identical.precision.value == 0.0


def test_a_resumed_pocan_fit_ends_with_the_weights_of_an_uninterrupted_one(net, tmp_path, one_thread):
    """Stopped after epoch 1 and resumed, POCAN's fit (class, spectrogram and perceptual losses; 26 clips in batches
    of 20, so a clip first seen in the short last batch of one epoch is in a full batch of the next) ends as the
    uninterrupted fit does, bit for bit."""
    from safetensors.torch import load_file

    import avgen
    from avgen import GeneratorShape
    from avgen._core.recipe import TrainParams
    from avgen._core.train import WeightedLoss, fit

    representation = avgen.create("representation", "stft")
    g = torch.Generator().manual_seed(3)
    wave = waves(26, 11)
    labels = torch.randint(0, 3, (26,), generator=g)
    rep = representation.encode(wave)
    features = torch.randn(26, 4, 8, generator=g) + labels[:, None, None]
    train = {"features": features, "rep": rep, "wave": wave, "label": labels}
    shape = GeneratorShape(8, rep.shape[1], rep.shape[2], 3)

    def run(run_dir, stop_after=None):
        def interrupt(epoch, entry):
            if epoch == stop_after:
                raise KeyboardInterrupt

        torch.manual_seed(0)
        model = avgen.create("generator", "can_lstm", context={"shape": shape}, hidden=16)
        losses = [WeightedLoss("class_nll", 1.0, avgen.create("loss", "class_nll")),
                  WeightedLoss("spec_smooth_l1", 50.0, avgen.create("loss", "spec_smooth_l1")),
                  WeightedLoss("soundnet_perceptual", 100.0,
                               SoundNetPerceptual(net, PerceptualParams(precision="fp32"), 22050))]
        return fit(model=model, losses=losses, train=train, val=None, params=TrainParams(batch_size=20, epochs=2),
                   run_dir=run_dir, seed=7, device=torch.device("cpu"), representation=representation,
                   on_epoch_end=interrupt)

    straight = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", stop_after=1)
    resumed = run(tmp_path / "b")  # a new loss object: its remembered features are made afresh, in other batches
    a, b = (load_file(tmp_path / d / "checkpoints" / "last.safetensors") for d in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [h["train"] for h in straight.history] == [h["train"] for h in resumed.history]
