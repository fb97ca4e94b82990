"""`avgen compare`: several runs' metrics in one table, in the paper's Table 2/3 layout: runs that
differ only in their seed folded into one row (mean and std), the reference baselines the runs
computed, and the paper's published numbers (Greatest Hits always, marked as other data when the
runs are not on it; VIG when a run is)."""

from __future__ import annotations

import html
import json
import statistics
import tomllib
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from avgen import AvgenError, is_untrained, make_console, read_json, run_name

from avgen_eval.compare_page import PageMedia, check_files_folder, files_folder, is_files_folder, summary_cell, write_page
from avgen_eval.report import BASELINE_TITLES, html_page

# (component/key, header, scale, decimals): the paper's columns first (Tables 2-4), in its units.
PAPER_COLUMNS: list[tuple[str, str, float, int]] = [
    ("recall_at_k/R@1", "R@1", 1.0, 4),
    ("recall_at_k/R@5", "R@5", 1.0, 4),
    ("recall_at_k/R@10", "R@10", 1.0, 4),
    ("recall_at_k/video_class_acc", "video cls %", 100.0, 2),  # not the paper's: the class head's accuracy from video
    ("sound_classifier/acc_raw", "acc %", 100.0, 2),  # Table 3: the classifier on each model's raw sound
    ("sound_classifier/acc_real", "real %", 100.0, 2),  # Table 3's "real sound clips" row: the classifier's ceiling
]


def _paper(model: str, r: tuple[float, float, float], acc: float | None = None, real: float | None = None) -> tuple[str, dict[str, float]]:
    metrics = {"recall_at_k/R@1": r[0], "recall_at_k/R@5": r[1], "recall_at_k/R@10": r[2]}
    if acc is not None:
        metrics["sound_classifier/acc_raw"] = acc / 100.0
    if real is not None:
        metrics["sound_classifier/acc_real"] = real / 100.0
    return model, metrics


# POCAN (Chen et al. 2018) Tables 2, 3 (GHD) and 4 (VIG); accuracies there are in percent.
PAPER_RESULTS: dict[str, list[tuple[str, dict[str, float]]]] = {
    "greatest_hits": [
        _paper("Owens (alex+coch)", (0.1471, 0.3982, 0.4896)),
        _paper("Owens (alex+spec)", (0.1515, 0.4077, 0.5083)),
        _paper("Owens (res+spec)", (0.1734, 0.4349, 0.5838), 20.11, 51.34),
        _paper("CAN (res+spec)", (0.3013, 0.5364, 0.6476), 35.46, 51.34),
        _paper("POCAN (res+spec)", (0.3302, 0.5719, 0.6553), 36.32, 51.34),
    ],
    "vig": [
        _paper("Owens (res+spec)", (0.0997, 0.2888, 0.4640)),
        _paper("CAN (res+spec)", (0.1180, 0.3469, 0.4709)),
        _paper("POCAN (res+spec)", (0.1223, 0.3625, 0.4802)),
    ],
}


FOLD_IGNORED = ("seed", "out", "device")  # [run] keys two runs may differ in and still be one row (mean, std)
OTHER_DATA = "paper, Greatest Hits (other data)"
PAPER_ENCODERS = {"resnet200d": "ResNet-200", "alexnet": "AlexNet"}  # the features the paper's rows were made with


def load_run(run_dir: Path) -> dict[str, Any]:
    """One run's row: name, dataset, flat metrics ('component/key' -> number), seed and its fold key."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise AvgenError(f"{run_dir}: no such run directory; pass the folder an `avgen run` wrote")
    metrics = read_json(run_dir / "metrics.json")
    if not isinstance(metrics, dict):
        raise AvgenError(f"{run_dir}: no metrics.json; run its evaluate stage first (avgen run RECIPE --only evaluate)")
    dataset = read_json(run_dir / "dataset.json") or {}
    flat = {
        f"{component}/{key}": value
        for component, values in metrics.items() if isinstance(values, dict)
        for key, value in values.items() if isinstance(value, (int, float)) and not isinstance(value, bool)
    }
    model = run_name(run_dir) + (" (untrained)" if is_untrained(run_dir) else "")
    recipe = _recipe(run_dir)
    section = recipe.get("run") if isinstance(recipe.get("run"), dict) else {}
    fold = {**recipe, "run": {k: v for k, v in section.items() if k not in FOLD_IGNORED}}
    encoder = recipe.get("encoder") if isinstance(recipe.get("encoder"), dict) else {}
    return {"model": model, "source": "run", "dataset": dataset.get("name"), "run_dir": str(run_dir), "metrics": flat,
            "std": {}, "runs": [str(run_dir)], "seeds": [section.get("seed")], "collapsed": [_collapsed(run_dir)],
            "provenance": dataset.get("provenance"), "encoder": encoder.get("name"),
            "fold_key": json.dumps([model, dataset.get("name"), fold], sort_keys=True, default=str)}


def run_folders(paths: list[Path]) -> list[Path]:
    """The run directories named: a folder that is not a run but holds runs (runs/quickstart/, made by a recipe
    with variants) stands for the runs directly in it."""
    out: list[Path] = []
    for path in paths:
        path = Path(path)
        if path.is_dir() and not (path / "recipe.toml").is_file():
            inner = sorted(p for p in path.iterdir() if p.is_dir() and (p / "recipe.toml").is_file())
            if inner:
                out.extend(inner)
                continue
        out.append(path)
    return out


def _collapsed(run_dir: Path) -> bool:
    """Whether the run's report warned that the model looks collapsed (stages.json report.collapse_warnings)."""
    ledger = read_json(run_dir / "stages.json")
    report = ledger.get("stages", {}).get("report") if isinstance(ledger, dict) else None
    return bool(report.get("collapse_warnings")) if isinstance(report, dict) else False


def _label(row: dict[str, Any]) -> dict[str, Any]:
    """The row with its model name marked when the report flagged a collapse (in how many of its seeds, or of its
    runs where some share a seed)."""
    flags = row["collapsed"]
    if not any(flags):
        return row
    unit = "seeds" if len(set(row.get("seeds") or [])) == len(flags) else "runs"
    mark = " [collapsed?]" if len(flags) == 1 else f" [collapsed? {sum(flags)} of {len(flags)} {unit}]"
    return {**row, "model": row["model"] + mark}


def _recipe(run_dir: Path) -> dict[str, Any]:
    try:
        return tomllib.loads((run_dir / "recipe.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return {}


def fold_seeds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs whose recipes differ only in [run] seed/out/device become one row: the mean of each metric and its
    sample standard deviation (n - 1) in ``std``, over the runs that have it."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["fold_key"], []).append(row)
    out = []
    for members in groups.values():
        if len(members) == 1:
            out.append(_label(members[0]))
            continue
        keys = list(dict.fromkeys(k for m in members for k in m["metrics"]))
        values = {k: [m["metrics"][k] for m in members if k in m["metrics"]] for k in keys}
        seeds = [m["seeds"][0] for m in members]
        distinct = len(set(map(str, seeds)))  # runs of one seed differ by threads or device only: say so
        count = f"{len(members)} seeds" if distinct == len(members) else \
            f"{len(members)} runs, {distinct} seed{'s' if distinct > 1 else ''}"
        out.append(_label({**members[0], "model": f"{members[0]['model']} ({count})",
                           "metrics": {k: statistics.fmean(v) for k, v in values.items()},
                           "std": {k: statistics.stdev(v) for k, v in values.items() if len(v) > 1},
                           "runs": [m["run_dir"] for m in members], "seeds": seeds,
                           "collapsed": [m["collapsed"][0] for m in members]}))
    return out


def baseline_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per reference baseline the runs report ('component/<baseline>.<key>'), with its mean and std over
    a folded row's runs; a baseline with the same data and mean values in several rows is shown once. A baseline's R@1 is also a
    class accuracy from video (the class of its first retrieved clip), so it fills the 'video cls %' column."""
    out: list[dict[str, Any]] = []
    seen: set[tuple[str, str, str]] = set()
    for row in rows:
        refs: dict[str, dict[str, tuple[float, float | None]]] = {}
        for key, value in row["metrics"].items():
            component, _, sub = key.partition("/")
            ref, dot, inner = sub.partition(".")
            if dot and ref and inner:
                refs.setdefault(ref, {})[f"{component}/{inner}"] = (value, row["std"].get(key))
        for ref, values in refs.items():
            metrics = {k: v for k, (v, _) in values.items()}
            std = {k: sd for k, (_, sd) in values.items() if sd is not None}
            if "recall_at_k/R@1" in metrics:
                metrics["recall_at_k/video_class_acc"] = metrics["recall_at_k/R@1"]
                if "recall_at_k/R@1" in std:
                    std["recall_at_k/video_class_acc"] = std["recall_at_k/R@1"]
            title = BASELINE_TITLES.get(ref, ref)
            candidate = {"model": title, "source": "baseline", "dataset": row["dataset"], "run_dir": None,
                         "metrics": metrics, "std": std, "runs": row["runs"], "baseline": ref}
            identity = (ref, json.dumps(row["dataset"]), json.dumps({k: round(v, 6) for k, v in metrics.items()}, sort_keys=True))
            if identity in seen:
                continue
            seen.add(identity)
            out.append(candidate)
    names = [r["model"] for r in out]
    for r, row in zip(out, [next(x for x in rows if x["runs"] == b["runs"]) for b in out]):
        if names.count(r["model"]) > 1:  # the same baseline differs between runs (e.g. another encoder)
            r["model"] += f" (as in {row['model']})"
    return out


def compare_runs(run_dirs: list[Path | str]) -> list[dict[str, Any]]:
    """Rows for the runs (seeds folded), their reference baselines, then the paper's rows: Greatest Hits always
    (marked as other data when no run is on it), VIG when a run is."""
    rows = fold_seeds([load_run(Path(d)) for d in run_dirs])
    rows += baseline_rows(rows)
    # a run on a stand-in in the dataset's layout (e.g. synthetic hits) is not on the paper's data
    datasets = list(dict.fromkeys(r["dataset"] for r in rows if r["source"] == "run" and r["dataset"] in PAPER_RESULTS
                                  and not r.get("provenance")))
    for dataset in datasets:
        rows += [
            {"model": model, "source": "paper", "dataset": dataset, "run_dir": None, "metrics": dict(metrics), "std": {}}
            for model, metrics in PAPER_RESULTS[dataset]
        ]
    if "greatest_hits" not in datasets:
        rows += [
            {"model": model, "source": OTHER_DATA, "dataset": "greatest_hits", "run_dir": None, "metrics": dict(metrics),
             "std": {}}
            for model, metrics in PAPER_RESULTS["greatest_hits"]
        ]
    return rows


def paper_notes(rows: list[dict[str, Any]]) -> list[str]:
    """What keeps the paper's rows from being a like-for-like comparison: runs on stand-in data, other encoders."""
    runs = [r for r in rows if r["source"] == "run"]
    stand_ins: dict[str, list[str]] = {}  # provenance -> the runs on it, of a dataset the paper has numbers for
    for r in runs:
        if r.get("provenance") and r["dataset"] in PAPER_RESULTS:
            stand_ins.setdefault(str(r["provenance"]), []).append(r["model"])
    notes = [f"the paper's numbers are on the real Greatest Hits; {', '.join(names)} {'is' if len(names) == 1 else 'are'}"
             f" on {provenance}" for provenance, names in stand_ins.items()]
    other = sorted({str(r.get("encoder")) for r in runs if r.get("encoder") and r.get("encoder") not in PAPER_ENCODERS})
    if other and any(r["source"].startswith("paper") for r in rows):
        notes.append(f"the paper's rows used {' and '.join(PAPER_ENCODERS.values())} features; runs here used "
                     f"{', '.join(other)}")
    return notes


def paper_columns(rows: list[dict[str, Any]]) -> list[tuple[str, str, float, int]]:
    """The paper's columns (R@K, classifier accuracy) that any row has."""
    present = {key for r in rows for key in r["metrics"]}
    return [c for c in PAPER_COLUMNS if c[0] in present]


def other_metrics(rows: list[dict[str, Any]]) -> list[str]:
    """Every other metric key of the runs (baselines' keys aside), in order of appearance."""
    known = {c[0] for c in PAPER_COLUMNS}
    return list(dict.fromkeys(k for r in rows if r["source"] == "run" for k in r["metrics"]
                              if k not in known and "." not in k.partition("/")[2]))


def _with_std(row: dict[str, Any], key: str, scale: float, decimals: int) -> str:
    value = row["metrics"].get(key)
    if value is None:
        return ""
    text = f"{value * scale:.{decimals}f}"
    std = row.get("std", {}).get(key)
    return text + (f" ± {std * scale:.{decimals}f}" if std is not None else "")


def cell(row: dict[str, Any], column: tuple[str, str, float, int]) -> str:
    key, _, scale, decimals = column
    return _with_std(row, key, scale, decimals)


def other_cell(row: dict[str, Any], key: str) -> str:
    return _with_std(row, key, 1.0, 4)


def _css_class(row: dict[str, Any]) -> str:
    return "paper" if row["source"].startswith("paper") else row["source"]


def _source(row: dict[str, Any]) -> str:
    if row["source"] == "run":
        return ", ".join(row["runs"])
    if row["source"] == "baseline":
        return "baseline"
    return row["source"]


def _source_html(row: dict[str, Any], media: PageMedia | None) -> str:
    """The source cell; a run's folders link to their report.html (relative to the page) when it has one."""
    links = media.links if media is not None else {}
    if row["source"] != "run" or not links:
        return html.escape(_source(row))
    return ", ".join(f"<a href=\"{html.escape(links[d])}\">{html.escape(d)}</a>" if d in links else html.escape(d)
                     for d in row["runs"])


def render_html(rows: list[dict[str, Any]], media: PageMedia | None = None) -> str:
    """Table 1: runs, baselines and paper rows x R@K and accuracy (paper layout), with the columns of the runs'
    section summaries (e.g. MOS when a run has listening-test ratings); the bar chart; table 2: other metrics x
    runs; the players. ``media`` (from ``write_media``) adds the links, chart, players and summaries; without it
    the page is the two tables."""
    e = html.escape
    cols = paper_columns(rows)
    extra = media.columns() if media is not None else []
    runs = [r for r in rows if r["source"] == "run"]
    parts = ["<h1>avgen compare</h1>",
             "<p>Runs that differ only in their seed are one row: mean ± sample standard deviation over the seeds. "
             "<i>baseline</i> rows are the reference baselines the runs computed on their own data (docs/evaluation.md); "
             "a method below visual nearest neighbour is not yet using the sound. Rows marked <i>paper</i> are the "
             "published numbers of POCAN (Chen et al. 2018, Tables 2-4); <i>" + e(OTHER_DATA) + "</i> marks them when "
             "the runs are on other data, so they are a reference, not a comparison. R@K as fractions; <i>video cls %</i> "
             "is the class head's accuracy from video (a baseline's: the class of its first retrieved clip); "
             "<i>acc %</i> is the sound classifier's accuracy on each model's raw sound and "
             "<i>real %</i> its accuracy on the real test audio (Table 3's last row), in percent.</p>"]
    parts.extend(f"<p class=\"warning\">{e(note[0].upper() + note[1:])}.</p>" for note in paper_notes(rows))
    if media is not None:
        parts.extend(f"<p>{note}</p>" for note in media.notes())  # the plugins' notes are HTML
        parts.extend(f"<p id=\"{e(name)}-errors\" class=\"warning\">" + "<br>".join(e(n) for n in lines) + "</p>"
                     for name, lines in media.errors.items())
    if media is not None and media.links:
        parts.append("<p>Each run's folder links to its report (metrics, figures, example clips).</p>")
    if cols:
        head = "<th>model</th><th>source</th><th>dataset</th>" + "".join(f"<th>{e(c[1])}</th>" for c in cols)
        head += "".join(f"<th>{e(header)}</th>" for _, header in extra)
        body = "".join(
            f"<tr class=\"{e(_css_class(r))}\"><td>{e(r['model'])}</td>"
            f"<td>{_source_html(r, media)}</td><td>{e(str(r['dataset'] or ''))}</td>"
            + "".join(f"<td class=\"num\">{cell(r, c)}</td>" for c in cols)
            + "".join(f"<td class=\"num {e(name)}\">{e(summary_cell(r, media, name, header))}</td>" for name, header in extra)
            + "</tr>"
            for r in rows
        )
        parts.append(f"<table id=\"compare\"><tr>{head}</tr>{body}</table>")
    if media is not None and media.chart:
        parts.append(f"<figure id=\"chart\"><img src=\"{e(media.chart)}\" alt=\"bar chart of the headline metrics\">"
                     "<figcaption>R@1, R@5, R@10 and the class accuracies (video: the class head or a baseline's "
                     "first retrieved clip; sound: the classifier on each model's raw sound) as fractions; "
                     "error bars: std over seeds.</figcaption></figure>")
    others = other_metrics(rows)
    if others:
        head = "<th>metric</th>" + "".join(f"<th>{e(r['model'])}</th>" for r in runs)
        body = "".join(
            f"<tr><td>{e(key)}</td>" + "".join(f"<td class=\"num\">{other_cell(r, key)}</td>" for r in runs) + "</tr>"
            for key in others
        )
        parts.append(f"<h2>Other metrics</h2><table id=\"other-metrics\"><tr>{head}</tr>{body}</table>")
    if media is not None and media.players:
        parts.append(media.players)
    return html_page("avgen compare", "\n".join(parts))


def rich_tables(rows: list[dict[str, Any]]) -> list[Table]:
    """The same two tables for the terminal."""
    tables = []
    cols = paper_columns(rows)
    if cols:
        table = Table(title="avgen compare (seeds folded: mean ± std; paper: POCAN, Chen et al. 2018)")
        table.add_column("model", overflow="fold")
        table.add_column("source", overflow="fold")
        for c in cols:
            table.add_column(c[1], justify="right", no_wrap=True, min_width=6)
        styles = {"run": None, "baseline": "cyan"}
        for r in rows:
            source = "run" if r["source"] == "run" else r["source"]
            table.add_row(escape(r["model"]), escape(source), *[cell(r, c) for c in cols],
                          style=styles.get(r["source"], "dim italic"))
        named = {c[1] for c in cols}
        legend = [text for column, text in (
            ("R@1", "R@K: a test clip's generated sound retrieves a training clip of its class among the K nearest"),
            ("video cls %", "video cls %: the class head's accuracy from the video"),
            ("acc %", "acc %: a sound classifier's accuracy on the generated raw sound"),
            ("real %", "real %: the same classifier on the real sound (its ceiling)")) if column in named]
        # escaped: a run's name may carry a mark in brackets ("[collapsed? 1 of 3 seeds]"), which rich would drop
        table.caption = escape("; ".join(legend + paper_notes(rows)) + " (docs/evaluation.md)") if legend else None
        tables.append(table)
    others = other_metrics(rows)
    if others:
        runs = [r for r in rows if r["source"] == "run"]
        table = Table(title="other metrics")
        table.add_column("metric", no_wrap=True)
        for r in runs:
            table.add_column(escape(r["model"]), justify="right", overflow="fold")
        for key in others:
            table.add_row(key, *[other_cell(r, key) for r in runs])
        tables.append(table)
    return tables


def check_page(output: Path, run_dirs: list[Path]) -> None:
    """Refuse, before any run is read, a page path that is a folder, cannot be written, is a file of one of the
    runs (their report.html, metrics.json), or whose files folder was not written by avgen compare."""
    from avgen import check_writable

    if output.is_dir():
        raise AvgenError(f"-o {output}: is a folder; give the HTML file to write, e.g. -o {output / 'compare.html'}")
    check_writable(output.parent, "the folder of the compare page", "give a path in a writable folder with -o")
    for run in run_dirs:
        if output.exists() and Path(run).resolve() in output.resolve().parents:
            raise AvgenError(f"-o {output}: is a file of the run {run}; an output never replaces an input: give another -o")
    check_files_folder(output)


@click.command("compare")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("compare.html"), show_default=True,
              help="HTML page to write (its chart, sounds and spectrograms go in a folder beside it: compare_files/).")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON instead of a table.")
def compare_command(run_dirs: tuple[Path, ...], output: Path, as_json: bool) -> None:
    """Compare the metrics of several runs (RUN_DIR...) in one table, in the paper's
    Table 2/3 layout: runs that differ only in seed folded into one row (mean ± std), the
    reference baselines (chance, visual nearest neighbour, training mean, oracle), and the
    paper's Greatest Hits numbers (marked as other data unless the runs are on greatest_hits).
    The page links to each run's report and adds a bar chart of the headline metrics, players
    for the same few test clips (real, raw and exemplar sound with spectrograms) and, when a run
    has listening-test ratings, their mean opinion scores.

    A folder that an earlier compare wrote (compare_files/, matched by `avgen compare runs/quickstart/*/`) is
    skipped. The page and its folder are checked before anything is read and written all or nothing."""
    runs = run_folders([d for d in run_dirs if not is_files_folder(d)])
    if not runs:
        raise AvgenError(f"{', '.join(map(str, run_dirs))}: written by avgen compare, not run directories; "
                         "pass the folders `avgen run` wrote")
    check_page(output, runs)
    rows = compare_runs(runs)
    media = write_page(rows, output, lambda media: render_html(rows, media))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    console = make_console()
    for table in rich_tables(rows):
        console.print(table)
    extra = f" and {files_folder(output)}/ ({', '.join(media.written)})" if media.written else ""
    console.print(f"written: {output}{extra}", markup=False)
