"""Reference baselines for R@K: what chance, the video alone, the training mean and the true sound score.

Each baseline retrieves training clips for every test clip and is scored by ``recall_at_k``,
exactly as a model's exemplar retrieval is. Results are keyed ``<baseline>.R@K``.
"""

from __future__ import annotations

from typing import Callable

import torch

from avgen import time_average

from avgen_retrieval.search import topk_cosine

BASELINES: tuple[str, ...] = ("chance", "visual_nn", "train_mean", "oracle")


def chance_recall(train_labels: torch.Tensor, test_labels: torch.Tensor, ks: list[int], depth: int | None = None) -> dict[str, float]:
    """Expected R@K when K distinct training clips are drawn uniformly at random (exact, no sampling).

    ``depth`` caps K as the retrieval depth caps a model's R@K (a K above it uses all ``depth`` clips).

    A test clip of class c misses with probability C(M - m_c, K) / C(M, K), m_c = training clips of class c.
    """
    total = int(train_labels.shape[0])
    labels = train_labels.long()
    counts = torch.bincount(labels[labels >= 0], minlength=1).tolist()  # unlabelled (-1) clips are never a hit
    out = {}
    for k in ks:
        k_eff = min(k, total, depth if depth is not None else k)
        hits = []
        for label in test_labels.long().tolist():
            same = counts[label] if 0 <= label < len(counts) else 0
            miss = 1.0
            for i in range(k_eff):  # prod_i (M - m_c - i) / (M - i)
                miss *= max(total - same - i, 0) / (total - i)
            hits.append(1.0 - miss)
        out[f"R@{k}"] = round(sum(hits) / len(hits), 6) if hits else 0.0
    return out


def _frame_average(features: torch.Tensor, rows: int = 4096) -> torch.Tensor:
    """[N, frames, dim] -> [N, dim], the time-averaged frame features (fixed summation order), ``rows`` clips
    at a time so a memory-mapped split is never copied whole."""
    parts = [time_average(features[start:start + rows].float().transpose(1, 2).contiguous())
             for start in range(0, features.shape[0], rows)]
    return torch.cat(parts) if parts else features.new_zeros(0, features.shape[-1]).float()


def baseline_retrievals(
    *, k: int, train_bank: Callable[[], torch.Tensor] | None, real_reps: torch.Tensor | None,
    test_features: torch.Tensor | None, train_features: Callable[[], torch.Tensor] | None, count: int,
) -> dict[str, torch.Tensor]:
    """{baseline: retrieved training indices long [count, k]} for each baseline whose inputs exist (chance excluded)."""
    out: dict[str, torch.Tensor] = {}
    if test_features is not None and train_features is not None:
        bank = _frame_average(train_features())
        _, out["visual_nn"] = topk_cosine(_frame_average(test_features), bank, min(k, bank.shape[0]))
    if train_bank is not None and real_reps is not None:  # a run with a representation
        bank = train_bank().float()
        mean = bank.double().mean(0, keepdim=True).float()  # the training-mean spectrogram, time-averaged
        _, top = topk_cosine(mean, bank, min(k, bank.shape[0]))
        out["train_mean"] = top.expand(count, -1)
        _, out["oracle"] = topk_cosine(time_average(real_reps.float()), bank, min(k, bank.shape[0]))
    return out
