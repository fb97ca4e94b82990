"""What a run directory holds, as its report shows it, and the report stage's entry point ``write_report``.

``collect`` reads a run directory into a ``RunContents``: the warnings (a collapsed model, an untrained
one), the metrics and the reference baselines beside the run, the fit line, the annotation rows the
dataset dropped, the figures, the recipe, and the sections plugins add (hook ``run_sections``, e.g. the
listening test's mean opinion scores). ``write_report`` hands it to the plugin that renders reports
(hook ``render_report``; the eval plugin writes ``report.html`` and ``report.md``,
plugins/avgen_eval/report.py). Anything a run lacks (no generator, no figures, no metrics yet) is
left empty. The small readers here (``read_json``, ``read_recipe``, ``run_name``, ``is_untrained``) are
public for plugins that read run directories.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------- reading a run directory


def read_json(path: Path) -> Any:
    """The JSON in path, or None when the file is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def run_name(run_dir: Path) -> str:
    """The recipe's [run] name, else the directory name."""
    recipe = read_recipe(run_dir)
    name = recipe.get("run", {}).get("name") if isinstance(recipe.get("run"), dict) else None
    return str(name) if name else Path(run_dir).resolve().name


def is_untrained(run_dir: Path) -> bool:
    """Whether the run's fit stage trained its generator for no epoch (train.epochs = 0)."""
    ledger = read_json(Path(run_dir) / "stages.json")
    stages = ledger.get("stages") if isinstance(ledger, dict) else None
    fit = stages.get("fit") if isinstance(stages, dict) else None
    return isinstance(fit, dict) and fit.get("epochs") == 0


def read_recipe(run_dir: Path) -> dict[str, Any]:
    """The run's recipe.toml as a dict, or {} when it is missing or unreadable."""
    try:
        return tomllib.loads((Path(run_dir) / "recipe.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return {}


# ---------------------------------------------------------------- reading a result: baselines, collapse, fit, dropped rows

SAME_EXEMPLAR_SHARE = 0.5  # a collapse: at least this share of the test clips gets one and the same exemplar
SAME_CLASS_SHARE = 0.9  # ... or the class head gives one class to this share (while no class holds half the clips)
SPREAD_FLOOR = 0.01  # ... or the median clip's s' is within 1 % (L2, relative) of the mean s'
MIN_CLIPS = 10  # fewer test clips than this: too few to call a collapse from shares


def baseline_rows(metrics: dict[str, Any]) -> dict[str, tuple[list[str], dict[str, dict[str, Any]]]]:
    """{metric: (keys, {row: {key: value}})} for every metric reporting '<baseline>.<key>' beside '<key>';
    the row 'this run' holds the run's own values, then one row per baseline in metrics.json order."""
    out = {}
    for component, values in metrics.items():
        if not isinstance(values, dict):
            continue
        refs: dict[str, dict[str, Any]] = {}
        for key, value in values.items():
            ref, dot, sub = key.partition(".")
            if dot and ref and sub:
                refs.setdefault(ref, {})[sub] = value
        if refs:
            keys = list(dict.fromkeys(k for row in refs.values() for k in row))
            out[component] = (keys, {"this run": {k: values[k] for k in keys if k in values}, **refs})
    return out


def evaluated_clip_count(run_dir: Path) -> int | None:
    """How many clips the run evaluated (generated/index.json), or None."""
    index = read_json(Path(run_dir) / "generated" / "index.json")
    clips = index.get("clips") if isinstance(index, dict) else None
    return len(clips) if isinstance(clips, list) else None


def collapse_warnings(run_dir: Path, metrics: dict[str, Any]) -> list[str]:
    """Why the run looks collapsed (its predictions nearly identical across clips, or a score at chance), one line each."""
    run_dir = Path(run_dir)
    warnings = []
    count = evaluated_clip_count(run_dir)
    for component, (keys, rows) in baseline_rows(metrics).items():
        chance, own = rows.get("chance", {}), rows["this run"]
        numeric = [k for k in keys if all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                          for v in (own.get(k), chance.get(k)))]
        if not numeric:
            continue
        key = numeric[0]  # the headline score (R@1): at large K chance itself comes near 1
        value, base = own[key], chance[key]
        margin = 2.0 * math.sqrt(max(base * (1.0 - base), 0.0) / count) if count else 0.0
        if value <= base + margin:  # not above chance by 2 binomial standard errors
            warnings.append(f"{component}: {key} {value:.4f} (chance {base:.4f}) not above chance"
                            + (f" by 2 standard errors over {count} clips" if count else ""))
    index = read_json(run_dir / "generated" / "index.json")
    clips = [c for c in index.get("clips", []) if isinstance(c, dict)] if isinstance(index, dict) else []
    if len(clips) >= MIN_CLIPS:
        exemplar, times = _mode([c.get("exemplar_id") for c in clips])
        if exemplar is not None and times >= SAME_EXEMPLAR_SHARE * len(clips):
            warnings.append(f"{times} of {len(clips)} test clips get the same exemplar (training clip {exemplar})")
        predicted, times = _mode([c.get("predicted") for c in clips])
        _, true_times = _mode([c.get("label") for c in clips])
        if predicted is not None and times >= SAME_CLASS_SHARE * len(clips) and true_times < 0.5 * len(clips):
            name = next((c.get("class") for c in clips if c.get("label") == predicted), None) or predicted
            warnings.append(f"the class head predicts '{name}' for {times} of {len(clips)} test clips")
    spread = prediction_spread(run_dir)
    if spread is not None and spread < SPREAD_FLOOR:
        warnings.append(f"predictions are nearly identical across clips: the median clip's s' is {100 * spread:.3g} % "
                        "(relative L2) from the mean s'")
    return warnings


def prediction_spread(run_dir: Path) -> float | None:
    """Median over clips of |s'_i - mean s'| / |mean s'| from generated/outputs.safetensors, or None."""
    path = Path(run_dir) / "generated" / "outputs.safetensors"
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            if "rep" not in f.keys():
                return None
            rep = f.get_tensor("rep").double().flatten(1)
    except Exception:  # damaged outputs: the evaluate stage already says so
        return None
    if rep.shape[0] < 2:
        return None
    mean = rep.mean(0)
    scale = float(mean.norm())
    if scale == 0.0:
        return 0.0 if float((rep - mean).norm(dim=1).max()) == 0.0 else None
    return float((rep - mean).norm(dim=1).median()) / scale


def _mode(values: list[Any]) -> tuple[Any, int]:
    """The most common non-None value and its count (ties: the first seen); (None, 0) when there is none."""
    counts: dict[Any, int] = {}
    for v in values:
        if v is not None:
            counts[v] = counts.get(v, 0) + 1
    if not counts:
        return None, 0
    best = max(counts, key=lambda v: counts[v])
    return best, counts[best]


def fit_line(run_dir: Path) -> str:
    """The fit stage's best validation losses against the training-mean predictor's, from stages.json."""
    from avgen._core.baseline import compare_line

    fit = _stage_info(run_dir, "fit")
    if not isinstance(fit.get("val"), dict) or not isinstance(fit.get("baseline_val"), dict):
        return ""
    return compare_line(fit["val"], fit["baseline_val"], int(fit.get("best_epoch", 0)))


def dropped_rows_line(run_dir: Path) -> str:
    """'annotation rows dropped: 72 (train 40, test 32): material None carries no class 72; each row is listed in
    skipped.txt', then the clips featurize left out as unreadable (the splits' counts above include them), or ''."""
    prepare = _stage_info(run_dir, "prepare")
    counts = prepare.get("skipped_rows")
    line = ""
    if isinstance(counts, dict) and counts:
        total = sum(int(v) for v in counts.values())
        line = f"annotation rows dropped: {total} (" + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")"
        reasons = prepare.get("skipped_reasons")
        if isinstance(reasons, dict) and reasons:
            line += ": " + "; ".join(f"{why} {n}" for why, n in reasons.items())
        line += "; each row is listed in skipped.txt"
    featurize = _stage_info(run_dir, "featurize")
    unreadable = {k: int(v["skipped"]) for k, v in featurize.items() if isinstance(v, dict) and v.get("skipped")}
    if unreadable:
        line += (". " if line else "") + f"unreadable clips left out of training and scoring: {sum(unreadable.values())} (" \
            + ", ".join(f"{k} {v}" for k, v in unreadable.items()) + "; the clip counts include them); each is listed " \
            "in skipped.txt"
    return line


def _stage_info(run_dir: Path, stage: str) -> dict[str, Any]:
    ledger = read_json(Path(run_dir) / "stages.json")
    stages = ledger.get("stages") if isinstance(ledger, dict) else None
    entry = stages.get(stage) if isinstance(stages, dict) else None  # the stage's info is kept in its ledger entry
    return entry if isinstance(entry, dict) else {}


def pick_examples(clips: list[Any], count: int) -> list[Any]:
    """``count`` clips spread over classes and source videos: round robin over the classes (in order of
    first appearance), each taking its first clip from a video not shown yet, else its next clip."""
    by_class: dict[int, list[Any]] = {}
    for clip in clips:
        by_class.setdefault(clip.label, []).append(clip)
    picked: list[Any] = []
    shown: set[str] = set()
    while len(picked) < min(count, len(clips)):
        for members in by_class.values():
            if not members or len(picked) >= count:
                continue
            clip = next((c for c in members if c.group not in shown), members[0])
            members.remove(clip)
            picked.append(clip)
            shown.add(clip.group)
    return picked


# ---------------------------------------------------------------- what a run directory holds


@dataclass(frozen=True)
class RunSummary:
    """How a table of several runs (``avgen compare``) shows a ``RunSection``: a few columns, one cell per run."""

    name: str  # short id of these columns: the HTML class of their cells, '<name>-errors' the id of the sections' errors
    cells: dict[str, str] = field(default_factory=dict)  # {column header: this run's cell, '' for none}
    note: str = ""  # what the columns mean: one paragraph of HTML, shown as is above the table


@dataclass(frozen=True)
class RunSection:
    """A table about one run that a plugin adds (hook ``run_sections``), e.g. the listening test's mean opinion
    scores. The run's report shows it under ``title``; ``avgen compare`` shows its ``summary``."""

    name: str  # short id, e.g. "listening": the id of its table in report.html
    title: str  # the heading, e.g. "Listening test"
    note: str = ""  # a paragraph of plain text under the heading
    columns: tuple[str, ...] = ()  # the header: the first column names a row, the others hold values
    rows: tuple[tuple[str, ...], ...] = ()  # text cells, one per column; no rows: no table
    error: str = ""  # one line when the plugin could not read its data (a damaged file), shown as a warning
    summary: RunSummary | None = None


@dataclass
class RunContents:
    """What a run's report shows (``collect``); a renderer (hook ``render_report``) turns it into files."""

    run_dir: Path
    name: str  # the recipe's [run] name, else the directory's
    untrained: bool  # the fit stage trained for no epoch
    warnings: list[str]  # why the model looks collapsed, one line each
    fit_line: str  # best validation losses against the training-mean predictor's, or ''
    dropped: str  # the annotation rows the dataset dropped, or ''
    recipe_text: str | None
    environment: Any  # environment.json
    dataset: Any  # dataset.json
    metrics: dict[str, Any]  # metrics.json
    baselines: dict[str, tuple[list[str], dict[str, dict[str, Any]]]]  # baseline_rows(metrics)
    figures: list[str]  # relative paths, loss curve first
    per_class: Any  # figures/classifier_per_class.json
    sections: list[RunSection] = field(default_factory=list)  # the plugins' sections (run_sections)


def collect(run_dir: Path) -> RunContents:
    """Read what the report shows from a run directory; missing parts become empty."""
    run_dir = Path(run_dir)
    recipe_path = run_dir / "recipe.toml"
    metrics = read_json(run_dir / "metrics.json")
    figures_dir = run_dir / "figures"
    figures = sorted(p.relative_to(run_dir).as_posix() for p in figures_dir.glob("*.png")) if figures_dir.is_dir() else []
    figures.sort(key=lambda p: (not p.endswith("/loss_curve.png"), not p.endswith("/loss_balance.png"),
                                not Path(p).stem.startswith("confusion"), p))
    metrics = metrics if isinstance(metrics, dict) else {}
    return RunContents(
        run_dir=run_dir,
        name=run_name(run_dir),
        untrained=is_untrained(run_dir),
        warnings=collapse_warnings(run_dir, metrics),
        fit_line=fit_line(run_dir),
        dropped=dropped_rows_line(run_dir),
        recipe_text=recipe_path.read_text(encoding="utf-8") if recipe_path.is_file() else None,
        environment=read_json(run_dir / "environment.json"),
        dataset=read_json(run_dir / "dataset.json"),
        metrics=metrics,
        baselines=baseline_rows(metrics),
        figures=figures,
        per_class=read_json(figures_dir / "classifier_per_class.json"),
        sections=run_sections(run_dir),
    )


def run_sections(run_dir: Path) -> list[RunSection]:
    """Every plugin's sections of the run (hook ``run_sections``), plugins in the order they were loaded."""
    from avgen._core.errors import AvgenError
    from avgen._core.plugins import get_plugins

    answers = get_plugins().pm.hook.run_sections(run_dir=Path(run_dir))
    sections = [section for answer in reversed(answers) for section in answer or []]  # pluggy calls the last loaded first
    for section in sections:
        if not isinstance(section, RunSection):
            raise AvgenError(f"a plugin's run_sections hook gave {type(section).__name__}, not an avgen.RunSection")
    return sections


def write_report(run_dir: Path) -> tuple[Path, Path]:
    """Write report.html (self-contained) and report.md (relative links) into run_dir: its ``collect``ed contents,
    rendered by the plugin that implements ``render_report`` (the eval plugin)."""
    from avgen._core.errors import AvgenError
    from avgen._core.plugins import first_answer

    run_dir = Path(run_dir)
    written = first_answer("render_report", contents=collect(run_dir), run_dir=run_dir)
    if written is None:
        raise AvgenError("no plugin renders run reports (the eval plugin, avgen_eval, does): reinstall avgen, "
                         "or add eval to AVGEN_LOAD_PLUGINS")
    html_path, md_path = written
    return Path(html_path), Path(md_path)
