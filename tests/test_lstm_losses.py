"""class_nll and spec_smooth_l1 against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import avgen
from avgen._core.errors import AvgenError


def smooth_l1_by_hand(x: float, beta: float = 1.0) -> float:
    """Paper Eq. 6 (with PyTorch's beta generalisation)."""
    return 0.5 * x * x / beta if abs(x) < beta else abs(x) - 0.5 * beta


def test_class_nll_is_minus_log_true_class_probability():
    loss = avgen.create("loss", "class_nll")
    assert loss.needs_wave is False
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.25, 0.5, 0.25]])
    labels = torch.tensor([0, 1, 2])
    value = loss({"probs": probs}, {"label": labels})
    expected = -(math.log(0.7) + math.log(0.1) + math.log(0.25)) / 3
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_class_nll_skips_unlabelled_clips_and_stays_finite():
    loss = avgen.create("loss", "class_nll")
    probs = torch.tensor([[1.0, 0.0], [0.4, 0.6]])
    value = loss({"probs": probs}, {"label": torch.tensor([-1, 1])})
    assert value.item() == pytest.approx(-math.log(0.6), rel=1e-6)
    assert torch.isfinite(loss({"probs": probs}, {"label": torch.tensor([1, 1])}))
    assert loss({"probs": probs}, {"label": torch.tensor([-1, -1])}).item() == 0.0


def test_class_nll_without_a_class_head_is_a_clear_error():
    loss = avgen.create("loss", "class_nll")
    with pytest.raises(AvgenError, match="no class head.*can_lstm"):
        loss({"rep": torch.zeros(1, 2, 2)}, {"label": torch.tensor([0])})


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_spec_smooth_l1_sums_per_clip_then_averages(beta):
    g = torch.Generator().manual_seed(3)
    predicted = torch.randn(3, 4, 5, generator=g) * 2
    target = torch.randn(3, 4, 5, generator=g)
    loss = avgen.create("loss", "spec_smooth_l1", beta=beta, reduction="sum_per_clip_mean")
    assert loss.needs_wave is False
    diff = (predicted - target).tolist()
    per_clip = [sum(smooth_l1_by_hand(v, beta) for row in clip for v in row) for clip in diff]
    value = loss({"rep": predicted}, {"rep": target})
    assert value.item() == pytest.approx(sum(per_clip) / 3, rel=1e-5)
    mean = avgen.create("loss", "spec_smooth_l1", beta=beta)({"rep": predicted}, {"rep": target})  # default: mean
    assert mean.item() == pytest.approx(sum(per_clip) / 60, rel=1e-5)
    torch.testing.assert_close(mean, F.smooth_l1_loss(predicted, target, beta=beta))


def test_spec_smooth_l1_gradient_and_shape_check():
    predicted = torch.tensor([[[0.5, 3.0]]], requires_grad=True)
    target = torch.zeros(1, 1, 2)
    loss = avgen.create("loss", "spec_smooth_l1", reduction="sum_per_clip_mean")
    loss({"rep": predicted}, {"rep": target}).backward()
    torch.testing.assert_close(predicted.grad, torch.tensor([[[0.5, 1.0]]]))  # x inside, sign(x) outside
    with pytest.raises(AvgenError, match="differ"):
        loss({"rep": torch.zeros(1, 2, 3)}, {"rep": torch.zeros(1, 3, 2)})
