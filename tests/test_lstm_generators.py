"""owens_lstm and can_lstm: shapes, class probabilities, base samples, s' = d + A, init, gradients."""

from __future__ import annotations

import math

import pytest
import torch

import avgen
from avgen._core.errors import AvgenError
from avgen import Generator, GeneratorShape

SHAPE = GeneratorShape(feature_dim=12, rep_dim=7, steps=9, num_classes=4)


def build(name: str, shape: GeneratorShape = SHAPE, **params) -> torch.nn.Module:
    torch.manual_seed(0)
    return avgen.create("generator", name, context={"shape": shape}, **params)


def hand_class_means(reps: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class means with a Python loop; absent classes get the mean of all clips."""
    out = []
    for j in range(num_classes):
        rows = [reps[i] for i in range(len(labels)) if int(labels[i]) == j]
        out.append(sum(rows) / len(rows) if rows else reps.mean(0))
    return torch.stack(out)


@pytest.fixture
def train_set() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    reps = torch.rand(30, SHAPE.rep_dim, SHAPE.steps, generator=g) * 5
    labels = torch.tensor([0, 1, 2, 3] * 7 + [0, 2])
    return reps, labels


@pytest.fixture
def can(train_set) -> torch.nn.Module:
    model = build("can_lstm")
    model.set_base_samples(*train_set)
    return model


@pytest.mark.parametrize("name", ["owens_lstm", "can_lstm"])
@pytest.mark.parametrize("options", [{}, {"layers": 2, "dropout": 0.3}, {"bidirectional": True, "hidden": 16}])
def test_output_shapes(name, options, train_set):
    model = build(name, **options)
    assert isinstance(model, Generator)
    model.prepare({"rep": train_set[0], "label": train_set[1]})
    out = model(torch.randn(5, 3, SHAPE.feature_dim))
    assert out["rep"].shape == (5, SHAPE.rep_dim, SHAPE.steps)
    assert out["residual"].shape == (5, SHAPE.rep_dim, SHAPE.steps)
    if name == "can_lstm":
        assert out["logits"].shape == (5, SHAPE.steps, SHAPE.num_classes)
        assert out["probs"].shape == (5, SHAPE.num_classes)
    else:
        assert "probs" not in out and torch.equal(out["rep"], out["residual"])


def test_default_hidden_size_is_the_papers():
    model = build("can_lstm")
    assert model.net.lstm.hidden_size == 128 and model.net.lstm.num_layers == 1
    assert model.net.project.out_features == SHAPE.num_classes + SHAPE.rep_dim


def test_frames_are_replicated_by_nearest_index_before_the_lstm(can):
    """The same LSTM and projection run on hand-replicated frames give the model's output."""
    can.eval()
    features = torch.randn(2, 4, SHAPE.feature_dim)
    index = [math.floor(i * 4 / SHAPE.steps) for i in range(SHAPE.steps)]
    hidden, _ = can.net.lstm(features[:, index])
    f = can.net.project(hidden)
    out = can(features)
    torch.testing.assert_close(out["logits"], f[..., : SHAPE.num_classes])
    torch.testing.assert_close(out["residual"], f[..., SHAPE.num_classes :].transpose(1, 2))


def test_probs_are_the_step_mean_of_softmax_and_sum_to_one(can):
    out = can(torch.randn(6, 3, SHAPE.feature_dim))
    logits = out["logits"].detach()
    by_hand = torch.exp(logits) / torch.exp(logits).sum(-1, keepdim=True)
    torch.testing.assert_close(out["probs"], by_hand.mean(1))
    torch.testing.assert_close(out["probs"].sum(-1), torch.ones(6))


def test_base_samples_are_per_class_means(train_set):
    reps, labels = train_set
    model = build("can_lstm")
    model.set_base_samples(reps, labels)
    torch.testing.assert_close(model.base_samples, hand_class_means(reps, labels, SHAPE.num_classes))
    assert "base_samples" in model.state_dict()


def test_absent_class_gets_the_global_mean_with_a_warning(train_set):
    reps, labels = train_set
    labels = torch.where(labels == 3, 1, labels)
    model = build("can_lstm")
    with pytest.warns(UserWarning, match=r"classes \[3\] have no training clips"):
        model.set_base_samples(reps, labels)
    torch.testing.assert_close(model.base_samples[3], reps.mean(0))
    torch.testing.assert_close(model.base_samples[1], reps[labels == 1].mean(0))


def test_unlabelled_clips_count_only_in_the_global_mean(train_set):
    reps, labels = train_set
    labels = labels.clone()
    labels[:4] = -1
    labels[labels == 2] = -1
    model = build("can_lstm")
    with pytest.warns(UserWarning):
        model.set_base_samples(reps, labels)
    torch.testing.assert_close(model.base_samples[0], reps[labels == 0].mean(0))
    torch.testing.assert_close(model.base_samples[2], reps.mean(0))


def test_hard_output_is_residual_plus_argmax_base_sample(can):
    can.eval()
    out = can(torch.randn(8, 3, SHAPE.feature_dim))
    winners = [int(torch.argmax(p)) for p in out["probs"]]
    for b, j in enumerate(winners):
        torch.testing.assert_close(out["rep"][b], out["residual"][b] + can.base_samples[j])


def test_soft_output_is_residual_plus_probability_weighted_base(train_set):
    model = build("can_lstm", base="soft")
    model.set_base_samples(*train_set)
    out = model(torch.randn(3, 3, SHAPE.feature_dim))
    for b in range(3):
        mix = sum(out["probs"][b, j] * model.base_samples[j] for j in range(SHAPE.num_classes))
        torch.testing.assert_close(out["rep"][b], out["residual"][b] + mix)


def test_teacher_forcing_uses_the_true_class_only_in_training(train_set):
    features = torch.randn(4, 3, SHAPE.feature_dim)
    labels = torch.tensor([3, 2, 1, 0])
    batch = {"features": features, "label": labels}
    forced, plain = build("can_lstm", teacher_forcing=True), build("can_lstm")
    for model in (forced, plain):
        model.prepare({"rep": train_set[0], "label": train_set[1]})
    forced.train()
    out = forced.training_outputs(batch)
    torch.testing.assert_close(out["rep"] - out["residual"], forced.base_samples[labels])
    out = plain.train().training_outputs(batch)  # off by default (the paper's setting): the predicted class
    torch.testing.assert_close(out["rep"] - out["residual"], plain.base_samples[out["probs"].argmax(-1)])
    forced.eval()
    out = forced(features, labels=labels)
    torch.testing.assert_close(out["rep"] - out["residual"], forced.base_samples[out["probs"].argmax(-1)])


def test_gradient_reaches_every_parameter(can):
    out = can(torch.randn(4, 3, SHAPE.feature_dim))
    (out["rep"].square().mean() - out["probs"][:, 0].log().mean()).backward()
    for name, param in can.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_xavier_init_of_lstm_and_projection():
    model = build("owens_lstm", GeneratorShape(feature_dim=300, rep_dim=200, steps=4, num_classes=0), hidden=200)
    for name, param in model.named_parameters():
        if "bias" in name:
            assert torch.count_nonzero(param) == 0, name
            continue
        fan_out, fan_in = param.shape
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        assert param.abs().max() <= bound, name
        # uniform(-a, a) has standard deviation a / sqrt(3); PyTorch's default init is >= 9 % off for every matrix here
        assert param.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02), name


def test_state_dict_round_trip_carries_the_base_samples(can):
    fresh = build("can_lstm")
    with pytest.raises(AvgenError, match="base samples are not set"):
        fresh(torch.randn(1, 3, SHAPE.feature_dim))
    fresh.load_state_dict(can.state_dict())
    can.eval(), fresh.eval()
    features = torch.randn(2, 3, SHAPE.feature_dim)
    torch.testing.assert_close(fresh(features)["rep"], can(features)["rep"], rtol=0, atol=0)


def test_owens_prepare_sets_only_the_projection_bias_to_the_mean_per_bin_and_it_has_no_class_head(train_set):
    model = build("owens_lstm")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.prepare({"rep": train_set[0], "label": train_set[1]})
    changed = [k for k, v in model.state_dict().items() if not torch.equal(before[k], v)]
    assert changed == ["net.project.bias"]
    reps = train_set[0].double().numpy()
    by_hand = [sum(float(reps[i, d, f]) for i in range(reps.shape[0]) for f in range(reps.shape[2]))
               / (reps.shape[0] * reps.shape[2]) for d in range(reps.shape[1])]
    assert model.net.project.bias.tolist() == pytest.approx(by_hand, rel=1e-5)
    assert model.class_probabilities(model(torch.randn(2, 3, SHAPE.feature_dim))) is None


def test_bad_inputs_give_clear_errors(train_set):
    model = build("can_lstm")
    with pytest.raises(AvgenError, match="expected reps"):
        model.set_base_samples(torch.zeros(3, 5, 5), torch.zeros(3, dtype=torch.long))
    with pytest.raises(AvgenError, match="out of range"):
        model.set_base_samples(train_set[0], train_set[1] + 10)
    with pytest.raises(AvgenError, match="unknown key"):
        build("can_lstm", hiden=3)
    with pytest.raises(AvgenError, match="num_classes=0"):
        build("can_lstm", GeneratorShape(4, 4, 4, 0))
