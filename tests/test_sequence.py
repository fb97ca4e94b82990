"""Nearest-index replication of frame features to the representation's steps."""

from __future__ import annotations

import torch

from avgen._core.sequence import replicate_to_steps


def test_replication_is_nearest_index_by_hand() -> None:
    x = torch.arange(15.0).reshape(1, 15, 1)
    out = replicate_to_steps(x, 22)
    expected = [int(i * 15 // 22) for i in range(22)]  # floor(i * N / steps)
    assert out.shape == (1, 22, 1)
    assert out[0, :, 0].tolist() == [float(e) for e in expected]
    # every frame is used and values are copies, not interpolations
    assert set(out.flatten().tolist()) == set(range(15))


def test_downsampling_and_identity() -> None:
    x = torch.randn(2, 8, 3)
    assert torch.equal(replicate_to_steps(x, 8), x)
    assert torch.equal(replicate_to_steps(x, 4), x[:, ::2])
