"""`avgen compare`: several runs' metrics in one table, in the paper's Table 2/3 layout,
with the paper's published numbers beside them on Greatest Hits and VIG."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from avgen import AvgenError, html_page, is_untrained, read_json, run_name, write_text

# (component/key, header, scale, decimals): the paper's columns first (Tables 2-4), in its units.
PAPER_COLUMNS: list[tuple[str, str, float, int]] = [
    ("recall_at_k/R@1", "R@1", 1.0, 4),
    ("recall_at_k/R@5", "R@5", 1.0, 4),
    ("recall_at_k/R@10", "R@10", 1.0, 4),
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


def load_run(run_dir: Path) -> dict[str, Any]:
    """One run's row: name, dataset and flat metrics ('component/key' -> number)."""
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
    return {"model": model, "source": "run", "dataset": dataset.get("name"), "run_dir": str(run_dir), "metrics": flat}


def compare_runs(run_dirs: list[Path | str]) -> list[dict[str, Any]]:
    """Rows for the runs, then the paper's rows for each dataset (GHD, VIG) the runs use."""
    rows = [load_run(Path(d)) for d in run_dirs]
    datasets = list(dict.fromkeys(r["dataset"] for r in rows if r["dataset"] in PAPER_RESULTS))
    for dataset in datasets:
        rows += [
            {"model": model, "source": "paper", "dataset": dataset, "run_dir": None, "metrics": dict(metrics)}
            for model, metrics in PAPER_RESULTS[dataset]
        ]
    return rows


def paper_columns(rows: list[dict[str, Any]]) -> list[tuple[str, str, float, int]]:
    """The paper's columns (R@K, classifier accuracy) that any row has."""
    present = {key for r in rows for key in r["metrics"]}
    return [c for c in PAPER_COLUMNS if c[0] in present]


def other_metrics(rows: list[dict[str, Any]]) -> list[str]:
    """Every other metric key of the runs, in order of appearance."""
    known = {c[0] for c in PAPER_COLUMNS}
    return list(dict.fromkeys(k for r in rows if r["source"] == "run" for k in r["metrics"] if k not in known))


def cell(row: dict[str, Any], column: tuple[str, str, float, int]) -> str:
    key, _, scale, decimals = column
    value = row["metrics"].get(key)
    return "" if value is None else f"{value * scale:.{decimals}f}"


def other_cell(row: dict[str, Any], key: str) -> str:
    value = row["metrics"].get(key)
    return "" if value is None else f"{value:.4f}"


def render_html(rows: list[dict[str, Any]]) -> str:
    """Table 1: runs and paper rows x R@K and accuracy (paper layout); table 2: other metrics x runs."""
    e = html.escape
    cols = paper_columns(rows)
    runs = [r for r in rows if r["source"] == "run"]
    parts = ["<h1>avgen compare</h1>",
             "<p>Rows marked <i>paper</i> are the published numbers of POCAN (Chen et al. 2018, Tables 2-4); "
             "R@K as fractions; <i>acc %</i> is the sound classifier's accuracy on each model's raw sound and "
             "<i>real %</i> its accuracy on the real test audio (Table 3's last row), in percent.</p>"]
    if cols:
        head = "<th>model</th><th>source</th><th>dataset</th>" + "".join(f"<th>{e(c[1])}</th>" for c in cols)
        body = "".join(
            f"<tr class=\"{e(r['source'])}\"><td>{e(r['model'])}</td>"
            f"<td>{e(r['source'] if r['source'] == 'paper' else str(r['run_dir']))}</td><td>{e(str(r['dataset'] or ''))}</td>"
            + "".join(f"<td class=\"num\">{cell(r, c)}</td>" for c in cols) + "</tr>"
            for r in rows
        )
        parts.append(f"<table id=\"compare\"><tr>{head}</tr>{body}</table>")
    others = other_metrics(rows)
    if others:
        head = "<th>metric</th>" + "".join(f"<th>{e(r['model'])}</th>" for r in runs)
        body = "".join(
            f"<tr><td>{e(key)}</td>" + "".join(f"<td class=\"num\">{other_cell(r, key)}</td>" for r in runs) + "</tr>"
            for key in others
        )
        parts.append(f"<h2>Other metrics</h2><table id=\"other-metrics\"><tr>{head}</tr>{body}</table>")
    return html_page("avgen compare", "\n".join(parts))


def rich_tables(rows: list[dict[str, Any]]) -> list[Table]:
    """The same two tables for the terminal."""
    tables = []
    cols = paper_columns(rows)
    if cols:
        table = Table(title="avgen compare (paper: POCAN, Chen et al. 2018)")
        table.add_column("model", overflow="fold")
        table.add_column("source", no_wrap=True)
        for c in cols:
            table.add_column(c[1], justify="right", no_wrap=True, min_width=6)
        for r in rows:
            table.add_row(r["model"], r["source"], *[cell(r, c) for c in cols],
                          style="dim italic" if r["source"] == "paper" else None)
        tables.append(table)
    others = other_metrics(rows)
    if others:
        runs = [r for r in rows if r["source"] == "run"]
        table = Table(title="other metrics")
        table.add_column("metric", no_wrap=True)
        for r in runs:
            table.add_column(r["model"], justify="right", overflow="fold")
        for key in others:
            table.add_row(key, *[other_cell(r, key) for r in runs])
        tables.append(table)
    return tables


@click.command("compare")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("compare.html"), show_default=True,
              help="HTML file to write the table to.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON instead of a table.")
def compare_command(run_dirs: tuple[Path, ...], output: Path, as_json: bool) -> None:
    """Compare the metrics of several runs (RUN_DIR...) in one table, in the paper's
    Table 2/3 layout, with the paper's numbers beside them on greatest_hits and vig."""
    rows = compare_runs(list(run_dirs))
    write_text(output, render_html(rows))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    console = Console()
    for table in rich_tables(rows):
        console.print(table)
    console.print(f"written: {output}", markup=False)
