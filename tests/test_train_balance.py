"""Loss balance made visible: per-term gradient norms per epoch, the figure, and the optional automatic balance."""

from __future__ import annotations

import json
import math

import pytest
import torch

import avgen
from avgen._core.errors import AvgenError
from avgen._core.train import WeightedLoss, balance_scales, derive_seed, fit
from test_train_fit import CPU, losses_for, make_model, synthetic_split, train_params

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data() -> tuple[dict, dict]:
    return synthetic_split(120, seed=1), synthetic_split(40, seed=2)


def first_batch_norms_by_backward(name: str, train: dict, batch_size: int, seed: int) -> dict[str, float]:
    """Each weighted term's gradient norm at the initial weights on epoch 1's first batch, by a separate
    ``.backward()`` per term on a fresh copy of the model (independent of train.py's autograd.grad path)."""
    order = torch.randperm(len(train["features"]), generator=torch.Generator().manual_seed(derive_seed(seed, 1, "order")))
    index = order[:batch_size]
    batch = {k: v[index].float() if v.is_floating_point() else v[index] for k, v in train.items()}
    norms = {}
    for loss in losses_for(name):
        model = make_model(name, hidden=16)
        model.prepare(train)
        model.train()
        torch.manual_seed(derive_seed(seed, 1, "dropout", 0))
        (loss.weight * loss.fn(model.training_outputs(batch), batch)).backward()
        norms[loss.name] = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters() if p.grad is not None))
    return norms


def test_grad_norms_per_epoch_match_a_separate_backward(data, tmp_path):
    train, val = data
    result = fit(model=make_model("can_lstm", hidden=16), losses=losses_for("can_lstm"), train=train, val=val,
                 params=train_params(epochs=3), run_dir=tmp_path, seed=0, device=CPU)
    history = json.loads((tmp_path / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert all(set(h["grad_norms"]) == {"class_nll", "spec_smooth_l1"} for h in history)
    assert result.history[0]["grad_norms"] == history[0]["grad_norms"]
    expected = first_batch_norms_by_backward("can_lstm", train, 20, seed=0)
    for name, value in expected.items():
        assert history[0]["grad_norms"][name] == pytest.approx(value, rel=1e-4)
    assert all(v > 0 for h in history for v in h["grad_norms"].values())
    assert (tmp_path / "figures" / "loss_balance.png").stat().st_size > 1000


def test_logging_the_grad_norms_leaves_training_unchanged(data, tmp_path):
    """The default (grad_norms on) ends with bit-identical weights to a fit that never computes them."""
    train, val = data
    weights = []
    for on in (True, False):
        model = make_model("can_lstm", hidden=16)
        fit(model=model, losses=losses_for("can_lstm"), train=train, val=val, params=train_params(epochs=3, grad_norms=on),
            run_dir=tmp_path / str(on), seed=0, device=CPU)
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    off = json.loads((tmp_path / "False" / "history.json").read_text())
    assert all("grad_norms" not in h for h in off)
    assert (tmp_path / "False" / "figures" / "loss_balance.png").is_file()  # the values panel alone


def test_balance_scales_give_each_term_its_share():
    losses = [WeightedLoss(n, 1.0, None) for n in ("a", "b", "c")]
    scales = balance_scales([4.0, 1.0, 0.0], losses, {})
    assert scales == pytest.approx([0.625, 2.5, 1.0])  # 4 x 0.625 = 1 x 2.5 = (4 + 1) / 2; c has no gradient
    scales = balance_scales([4.0, 1.0, 2.0], losses, {"a": 2.0})  # shares 2 : 1 : 1 of 7
    assert [g * s for g, s in zip([4.0, 1.0, 2.0], scales)] == pytest.approx([3.5, 1.75, 1.75])


def test_grad_share_balance_trains_with_equal_gradient_shares(data, tmp_path):
    train, val = data
    model = make_model("can_lstm", hidden=16)
    fit(model=model, losses=losses_for("can_lstm"), train=train, val=val,
        params=train_params(epochs=3, balance="grad_share"), run_dir=tmp_path, seed=0, device=CPU)
    history = json.loads((tmp_path / "history.json").read_text())
    first = history[0]
    # the factors come from epoch 1's first batch at the initial weights, measured independently here
    norms = first_batch_norms_by_backward("can_lstm", train, 20, seed=0)
    balanced = [norms[n] * first["loss_scales"][n] for n in ("class_nll", "spec_smooth_l1")]
    assert balanced[0] == pytest.approx(balanced[1], rel=1e-4)
    assert sum(balanced) == pytest.approx(sum(norms.values()), rel=1e-4)
    assert all(set(h["loss_scales"]) == {"class_nll", "spec_smooth_l1"} for h in history)
    # the logged totals stay in the recipe's weights: total = 1 x class_nll + 50 x spec_smooth_l1
    for h in history:
        assert h["val"]["total"] == pytest.approx(h["val"]["class_nll"] + 50 * h["val"]["spec_smooth_l1"], rel=1e-5)


def test_balance_shares_must_name_a_loss(data, tmp_path):
    train, val = data
    with pytest.raises(AvgenError, match="balance_shares names spec_l1"):
        fit(model=make_model("owens_lstm", hidden=16), losses=losses_for("owens_lstm"), train=train, val=val,
            params=train_params(balance="grad_share", balance_shares={"spec_l1": 2.0}), run_dir=tmp_path, seed=0, device=CPU)


def test_a_term_without_gradient_logs_zero(data, tmp_path):
    """A loss that does not depend on the weights (a constant) gets norm 0 and does not break the step."""

    class Constant(avgen.Loss):
        def __call__(self, outputs, batch):
            return torch.tensor(0.5)

    train, val = data
    losses = losses_for("owens_lstm") + [WeightedLoss("constant", 3.0, Constant())]
    fit(model=make_model("owens_lstm", hidden=16), losses=losses, train=train, val=val, params=train_params(epochs=1),
        run_dir=tmp_path, seed=0, device=CPU)
    norms = json.loads((tmp_path / "history.json").read_text())[0]["grad_norms"]
    assert norms["constant"] == 0.0 and norms["spec_smooth_l1"] > 0
