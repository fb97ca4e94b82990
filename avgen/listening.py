"""Listening-test ratings of a run (``<run_dir>/listening/ratings.json``) and their mean opinion score.

Minimal reader for the compare page; ``avgen serve`` (another branch) writes the file and brings the
full version of this module. The file is ``{"version": 1, "ratings": [{"trial", "clip", "system",
"score", "rater", "time"}, ...]}`` with ``system`` one of ``reference``, ``raw``, ``exemplar`` and
``score`` from 0 to 100.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from avgen.errors import AvgenError

RATINGS = "listening/ratings.json"
SYSTEMS = ("reference", "raw", "exemplar")


def read_ratings(run_dir: str | Path) -> list[dict[str, Any]]:
    """The run's valid ratings in file order ([] when it has none); an unreadable file is an AvgenError."""
    path = Path(run_dir) / RATINGS
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AvgenError(f"{path}: unreadable listening-test ratings ({exc}); move it aside to start afresh") from exc
    entries = data.get("ratings") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise AvgenError(f"{path}: not a ratings file (no \"ratings\" list); move it aside to start afresh")
    return [r for r in entries if isinstance(r, dict) and r.get("system") in SYSTEMS
            and isinstance(r.get("score"), (int, float)) and not isinstance(r.get("score"), bool)
            and 0.0 <= float(r["score"]) <= 100.0]


def mos(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """``{system: {"mean", "ci95", "n"}}`` for each rated system; ``ci95`` is the half-width of the 95 %
    confidence interval of the mean (Student's t, n - 1 degrees of freedom), None for one rating."""
    from scipy.stats import t

    out: dict[str, dict[str, Any]] = {}
    ratings = read_ratings(run_dir)
    for system in SYSTEMS:
        scores = [float(r["score"]) for r in ratings if r["system"] == system]
        n = len(scores)
        if not n:
            continue
        mean = sum(scores) / n
        ci95 = None
        if n > 1:
            std = math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1))
            ci95 = float(t.ppf(0.975, n - 1) * std / math.sqrt(n))
        out[system] = {"mean": mean, "ci95": ci95, "n": n}
    return out
