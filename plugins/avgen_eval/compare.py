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

from avgen.atomic import write_text
from avgen.errors import AvgenError
from avgen.report import html_page, read_json, run_name

# (component/key, header, scale, decimals): the paper's columns first (Tables 2-4), in its units.
PAPER_COLUMNS: list[tuple[str, str, float, int]] = [
    ("recall_at_k/R@1", "R@1", 1.0, 4),
    ("recall_at_k/R@5", "R@5", 1.0, 4),
    ("recall_at_k/R@10", "R@10", 1.0, 4),
    ("sound_classifier/acc_raw", "Acc. raw (%)", 100.0, 2),
    ("sound_classifier/acc_real", "Acc. real (%)", 100.0, 2),
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
        _paper("Owens et al. (alex + coch)", (0.1471, 0.3982, 0.4896)),
        _paper("Owens et al. (alex + spec)", (0.1515, 0.4077, 0.5083)),
        _paper("Owens et al. (res + spec)", (0.1734, 0.4349, 0.5838), 20.11, 51.34),
        _paper("CAN (res + spec)", (0.3013, 0.5364, 0.6476), 35.46, 51.34),
        _paper("POCAN (res + spec)", (0.3302, 0.5719, 0.6553), 36.32, 51.34),
    ],
    "vig": [
        _paper("Owens et al. (res + spec)", (0.0997, 0.2888, 0.4640)),
        _paper("CAN (res + spec)", (0.1180, 0.3469, 0.4709)),
        _paper("POCAN (res + spec)", (0.1223, 0.3625, 0.4802)),
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
    return {"model": run_name(run_dir), "source": "run", "dataset": dataset.get("name"), "run_dir": str(run_dir), "metrics": flat}


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


def columns_for(rows: list[dict[str, Any]]) -> list[tuple[str, str, float, int]]:
    """The paper's columns the rows have, then every other metric in order of appearance."""
    present = list(dict.fromkeys(key for r in rows for key in r["metrics"]))
    known = {c[0] for c in PAPER_COLUMNS}
    cols = [c for c in PAPER_COLUMNS if c[0] in present]
    cols += [(key, key, 1.0, 4) for key in present if key not in known]
    return cols


def cell(row: dict[str, Any], column: tuple[str, str, float, int]) -> str:
    key, _, scale, decimals = column
    value = row["metrics"].get(key)
    return "" if value is None else f"{value * scale:.{decimals}f}"


def render_html(rows: list[dict[str, Any]]) -> str:
    e = html.escape
    cols = columns_for(rows)
    head = "<th>model</th><th>source</th><th>dataset</th>" + "".join(f"<th>{e(c[1])}</th>" for c in cols)
    body = "".join(
        f"<tr class=\"{'paper' if r['source'] == 'paper' else 'run'}\"><td>{e(r['model'])}</td>"
        f"<td>{e(r['source'] if r['source'] == 'paper' else str(r['run_dir']))}</td><td>{e(str(r['dataset'] or ''))}</td>"
        + "".join(f"<td class=\"num\">{cell(r, c)}</td>" for c in cols) + "</tr>"
        for r in rows
    )
    note = ("<p>Rows marked <i>paper</i> are the published numbers of POCAN (Chen et al. 2018, Tables 2-4); "
            "accuracies are in percent, R@K as fractions.</p>")
    return html_page("avgen compare", f"<h1>avgen compare</h1>{note}<table id=\"compare\"><tr>{head}</tr>{body}</table>")


def rich_table(rows: list[dict[str, Any]]) -> Table:
    cols = columns_for(rows)
    table = Table(title="avgen compare (paper rows: POCAN, Chen et al. 2018)")
    table.add_column("model")
    table.add_column("source")
    for c in cols:
        table.add_column(c[1], justify="right")
    for r in rows:
        style = "dim italic" if r["source"] == "paper" else None
        table.add_row(r["model"], "paper" if r["source"] == "paper" else str(r["run_dir"]),
                      *[cell(r, c) for c in cols], style=style)
    return table


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
    console.print(rich_table(rows))
    console.print(f"written: {output}", markup=False)
