"""Seeded splits by group, so no source video is shared between train, val and test."""

from __future__ import annotations

import random
from typing import Iterable


def carve(groups: Iterable[str], fraction: float, seed: int) -> set[str]:
    """A seeded subset of round(fraction * n) groups (at least one when fraction > 0 and n >= 2)."""
    unique = sorted(set(groups))
    if fraction <= 0 or len(unique) < 2:
        return set()
    count = min(len(unique) - 1, max(1, round(fraction * len(unique))))
    return set(random.Random(seed).sample(unique, count))
