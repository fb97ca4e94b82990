"""Listening-test ratings of a run: ``<run_dir>/listening/ratings.json``, read and appended.

The file is ``{"version": 1, "ratings": [{"trial", "clip", "system", "score", "rater", "time"}, ...]}``:
one entry per stimulus a rater scored (``system`` is ``raw``, ``exemplar`` or ``reference``, the hidden
real sound; ``score`` 0..100; ``time`` ISO-8601). ``avgen serve`` writes it; ``section`` gives its mean
opinion scores to the run's report and the compare page (the ``run_sections`` hook).
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any, Iterator

from avgen import AvgenError, RunSection, RunSummary, write_json

RATINGS = "listening/ratings.json"
SYSTEMS = ("reference", "raw", "exemplar")  # in the order tables show them
VERSION = 1
_FIELDS = ("trial", "clip", "system", "score", "rater", "time")
COMPARED = ("raw", "exemplar")  # the systems with a column on the compare page (the hidden reference is a check)
NOTE = ("Blind MUSHRA-style ratings from 0 to 100 (avgen serve, docs/serve.md); the reference is the hidden "
        "real sound. MOS = mean opinion score, with the half-width of its 95 % confidence interval (t).")
COMPARE_NOTE = ("<i>MOS</i>: mean opinion score (0-100) from the run's listening test (<code>avgen serve</code>, "
                "listening/ratings.json), ± the half-width of its 95 % confidence interval (Student's t), n ratings.")


def ratings_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / RATINGS


def check_rating(entry: Any) -> dict[str, Any]:
    """The rating as stored (the six fields, score a float), or AvgenError naming what is wrong."""
    if not isinstance(entry, dict):
        raise AvgenError(f"a rating must be an object with {', '.join(_FIELDS)}; got {type(entry).__name__}")
    missing = [k for k in _FIELDS if k not in entry]
    if missing:
        raise AvgenError(f"a rating lacks {', '.join(missing)}; each needs {', '.join(_FIELDS)}")
    if entry["system"] not in SYSTEMS:
        raise AvgenError(f"rating system {entry['system']!r} is not one of {', '.join(SYSTEMS)}")
    score = entry["score"]
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0.0 <= float(score) <= 100.0:
        raise AvgenError(f"rating score {score!r} is not a number from 0 to 100")
    for key in ("trial", "clip", "rater", "time"):
        if not isinstance(entry[key], str):
            raise AvgenError(f"rating {key} {entry[key]!r} is not text")
    return {"trial": entry["trial"], "clip": entry["clip"], "system": entry["system"], "score": float(score),
            "rater": entry["rater"], "time": entry["time"]}


def read_ratings(run_dir: str | Path) -> list[dict[str, Any]]:
    """The run's ratings in the order they were given ([] when it has none); entries that are not
    valid ratings are skipped. An unreadable file is an AvgenError naming it."""
    path = ratings_path(run_dir)
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AvgenError(f"{path}: unreadable listening-test ratings ({exc}); move it aside to start afresh") from exc
    entries = data.get("ratings") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise AvgenError(f"{path}: not a ratings file (no \"ratings\" list); move it aside to start afresh")
    out = []
    for entry in entries:
        try:
            out.append(check_rating(entry))
        except AvgenError:
            continue
    return out


def mos(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Mean opinion score per system: ``{system: {"mean", "ci95", "n"}}``, systems in ``SYSTEMS`` order,
    only those rated. ``ci95`` is the half-width of the 95 % confidence interval of the mean
    (Student's t, n - 1 degrees of freedom); None for a single rating."""
    return mean_scores(read_ratings(run_dir))


def mean_scores(ratings: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``mos`` of a list of ratings (as ``read_ratings`` returns). scipy is imported only for a confidence interval
    to compute (1-2 s that every report of an unrated run would otherwise spend)."""
    out: dict[str, dict[str, Any]] = {}
    for system in SYSTEMS:
        scores = [r["score"] for r in ratings if r["system"] == system]
        n = len(scores)
        if n == 0:
            continue
        mean = sum(scores) / n
        ci95 = None
        if n > 1:
            from scipy.stats import t

            std = math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1))
            ci95 = float(t.ppf(0.975, n - 1) * std / math.sqrt(n))
        out[system] = {"mean": mean, "ci95": ci95, "n": n}
    return out


def mos_line(scores: dict[str, dict[str, Any]]) -> str:
    """One line such as ``reference 91.0 +- 4.2 (n=6); raw 40.5 +- 9.1 (n=6)``."""
    parts = []
    for system, s in scores.items():
        spread = f" +- {s['ci95']:.1f}" if s["ci95"] is not None else ""
        parts.append(f"{system} {s['mean']:.1f}{spread} (n={s['n']})")
    return "; ".join(parts)


def section(run_dir: str | Path) -> list[RunSection]:
    """The run's listening test as a report section: MOS, 95 % CI and n per rated system, and for the compare
    page 'MOS raw' / 'MOS exemplar' cells; its error line when ratings.json is unreadable; [] when unrated."""
    try:
        scores = mos(run_dir)
    except AvgenError as exc:
        return [RunSection("listening", "Listening test", NOTE, error=str(exc), summary=RunSummary("mos", note=COMPARE_NOTE))]
    if not scores:
        return []
    rows = tuple((system, f"{s['mean']:.1f}", "-" if s["ci95"] is None else f"± {s['ci95']:.1f}", str(s["n"]))
                 for system, s in scores.items())
    cells = {f"MOS {system}": _cell(scores[system]) if system in scores else "" for system in COMPARED}
    return [RunSection("listening", "Listening test", NOTE, columns=("system", "MOS", "95 % CI", "n"), rows=rows,
                       summary=RunSummary("mos", cells, COMPARE_NOTE))]


def _cell(score: dict[str, Any]) -> str:
    """'72.1 ± 4.3 (n=12)': a mean opinion score in one cell."""
    spread = f" ± {score['ci95']:.1f}" if score["ci95"] is not None else ""
    return f"{score['mean']:.1f}{spread} (n={score['n']})"


@contextlib.contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run's ratings while reading and rewriting them (POSIX; elsewhere none)."""
    folder = ratings_path(run_dir).parent
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: one server process is the only writer
        yield
        return
    with open(folder / ".ratings.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def append_ratings(run_dir: str | Path, ratings: list[dict[str, Any]]) -> int:
    """Add ratings to the run's file, rewritten atomically (a crash leaves the old or the new file);
    returns how many the file holds now. Every rating is checked before anything is written."""
    new = [check_rating(r) for r in ratings]
    run_dir = Path(run_dir)
    with _locked(run_dir):
        path = ratings_path(run_dir)
        kept: list[Any] = []
        if path.is_file():
            read_ratings(run_dir)  # refuses to overwrite a file it cannot read
            kept = json.loads(path.read_text(encoding="utf-8"))["ratings"]  # entries kept as written, even odd ones
        write_json(path, {"version": VERSION, "ratings": kept + new})
        return len(kept) + len(new)
