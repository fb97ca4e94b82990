"""The run report: ``report.html`` (self-contained, opens from disk) and ``report.md`` of a run.

``avgen.write_report`` (the report stage) reads the run directory into an ``avgen.RunContents`` and
calls the ``render_report`` hook, which this module implements. Both files hold the warnings (a
collapsed model, an untrained one), the metrics table (every value exactly as in ``metrics.json``),
the reference baselines beside the run, the fit line, the annotation rows the dataset dropped, the
plugins' sections (``avgen.RunSection``, e.g. the listening test), the figures, the example clips
(spectrograms of ground truth / raw / exemplar and audio players) and the recipe. Anything a run
lacks (no generator, no figures, no metrics yet) is left out.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any, Sequence

from avgen import RunContents, RunSection, write_text

from avgen_eval.clips import SOUND_KINDS, ExampleClip, example_clips, write_spectrograms

CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .6em 0; }
th, td { border: 1px solid #ccc; padding: .3em .7em; text-align: left; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.paper td { color: #555; font-style: italic; background: #fafafa; }
tr.baseline td { color: #335; background: #f4f7fb; }
.warning { color: #b00; font-weight: bold; border: 2px solid #b00; border-radius: 6px; padding: .5em .8em; }
figure { display: inline-block; margin: .5em 1em .5em 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #eee; } figcaption { font-size: .9em; color: #555; }
.clip { border: 1px solid #ddd; border-radius: 6px; padding: .6em; margin: .8em 0; }
.players { display: flex; gap: 1em; flex-wrap: wrap; } .players div { font-size: .9em; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; font-size: .85em; }
"""


def format_number(value: Any) -> str:
    """A metric value as text that parses back to exactly the same number (Python's shortest repr)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return "nan" if math.isnan(value) else repr(float(value))


def html_page(title: str, body: str) -> str:
    """A complete HTML document with the report style."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def data_uri(path: Path, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


UNTRAINED = ("UNTRAINED: train.epochs = 0, the generator was never trained; every result below comes from its "
             "initial random weights")


COLLAPSED = ("COLLAPSED? The model's predictions look collapsed (nearly the same for every clip, or a score at "
             "chance); its numbers below say little about the method:")
BASELINE_TITLES = {"this run": "this run", "chance": "chance (random training clips)",
                   "visual_nn": "visual nearest neighbour", "train_mean": "training-mean spectrogram",
                   "oracle": "oracle (the true test sound)"}
BASELINES_NOTE = ("Each baseline retrieves training clips and is scored like the run: visual nearest neighbour by the "
                  "time-averaged frame features, the training mean and the oracle by the representation (docs/evaluation.md). "
                  "A method below visual nearest neighbour is not yet using the sound.")




def metric_rows(metrics: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(metric component, key, value) in metrics.json order."""
    rows = []
    for component, values in metrics.items():
        if isinstance(values, dict):
            rows.extend((component, key, value) for key, value in values.items())
        else:
            rows.append((component, "", values))
    return rows


def _caption(rel: str) -> str:
    return Path(rel).stem.replace("_", " ")


def render_html(c: RunContents, examples: Sequence[ExampleClip] = ()) -> str:
    e = html.escape
    parts = [f"<h1>{e(_title(c))}</h1>"]
    if c.untrained:
        parts.append(f"<p id=\"untrained\" style=\"color:#b00;font-weight:bold\">{e(UNTRAINED)}</p>")
    if c.warnings:
        items = "".join(f"<li>{e(w)}</li>" for w in c.warnings)
        parts.append(f"<div id=\"collapse\" class=\"warning\">{e(COLLAPSED)}<ul>{items}</ul></div>")
    if isinstance(c.dataset, dict):
        splits = ", ".join(f"{e(str(k))} {e(str(v))}" for k, v in (c.dataset.get("splits") or {}).items())
        parts.append(f"<p>dataset <b>{e(str(c.dataset.get('name', '?')))}</b>, "
                     f"{len(c.dataset.get('class_names') or [])} classes; clips: {splits}</p>")
    if c.dropped:
        parts.append(f"<p id=\"dropped\">{e(c.dropped)}</p>")
    if c.fit_line:
        parts.append(f"<p id=\"fit\">fit: {e(c.fit_line)}</p>")
    parts.append("<h2>Metrics</h2>")
    rows = metric_rows(c.metrics)
    if rows:
        body = "".join(
            f"<tr><td>{e(comp)}</td><td>{e(key)}</td>"
            f"<td class=\"num\" data-key=\"{e(comp)}/{e(key)}\">{e(format_number(value))}</td></tr>"
            for comp, key, value in rows
        )
        parts.append(f"<table id=\"metrics\"><tr><th>metric</th><th>key</th><th>value</th></tr>{body}</table>")
    else:
        parts.append("<p>No metrics yet (run the evaluate stage).</p>")
    for component, (keys, table) in c.baselines.items():
        head = "<th>reference</th>" + "".join(f"<th>{e(k)}</th>" for k in keys)
        body = "".join(
            f"<tr class=\"{'run' if ref == 'this run' else 'baseline'}\"><td>{e(BASELINE_TITLES.get(ref, ref))}</td>"
            + "".join(f"<td class=\"num\">{e(format_number(row[k])) if k in row else ''}</td>" for k in keys) + "</tr>"
            for ref, row in table.items()
        )
        parts.append(f"<h3>{e(component)} beside the reference baselines</h3><p>{e(BASELINES_NOTE)}</p>"
                     f"<table class=\"baselines\" id=\"baselines-{e(component)}\"><tr>{head}</tr>{body}</table>")
    parts.append(_per_class_html(c.per_class))
    parts.extend(_section_html(section) for section in c.sections)
    if c.figures:
        parts.append("<h2>Figures</h2>")
        parts.extend(
            f"<figure><img src=\"{data_uri(c.run_dir / rel, 'image/png')}\" alt=\"{e(_caption(rel))}\">"
            f"<figcaption>{e(_caption(rel))}</figcaption></figure>"
            for rel in c.figures
        )
    if examples:
        parts.append("<h2>Example clips</h2>")
        for clip in examples:
            parts.append(f"<div class=\"clip\"><h3>{e(clip.id)}</h3><p>{e(_clip_line(clip))}</p>")
            if clip.spectrogram:
                parts.append(f"<img src=\"{data_uri(c.run_dir / clip.spectrogram, 'image/png')}\" "
                             f"alt=\"spectrograms of {e(clip.id)}\" style=\"max-width:100%\">")
            players = "".join(
                f"<div>{e(title)}<br><audio controls preload=\"none\" src=\"{data_uri(c.run_dir / clip.sounds[kind], 'audio/wav')}\">"
                "</audio></div>"
                for kind, title in SOUND_KINDS if kind in clip.sounds
            )
            parts.append(f"<div class=\"players\">{players}</div></div>")
    if c.recipe_text is not None:
        parts.append(f"<h2>Recipe</h2><pre>{e(c.recipe_text)}</pre>")
    if c.environment is not None:
        parts.append(f"<h2>Environment</h2><pre>{e(json.dumps(c.environment, indent=2))}</pre>")
    return html_page(_title(c), "\n".join(p for p in parts if p))


def _section_html(section: RunSection) -> str:
    """A plugin's section: its title, note, error line (a warning) and table."""
    e = html.escape
    error = f"<p class=\"warning\">{e(section.error)}</p>" if section.error else ""
    table = ""
    if section.rows:
        head = "".join(f"<th>{e(c)}</th>" for c in section.columns)
        body = "".join("<tr>" + "".join(f"<td>{e(v)}</td>" for v in row) + "</tr>" for row in section.rows)
        table = f"<table id=\"{e(section.name)}\"><tr>{head}</tr>{body}</table>"
    note = f"<p>{e(section.note)}</p>" if section.note else ""
    return f"<h2>{e(section.title)}</h2>{note}{error}{table}"


def _section_markdown(section: RunSection) -> list[str]:
    """The same in markdown: the first column left-aligned, the others (values) right-aligned."""
    lines = ["", f"## {section.title}", ""]
    if section.note:
        lines += [section.note, ""]
    if section.error:
        lines += [f"**{_md(section.error)}**", ""]
    if section.rows:
        lines += ["| " + " | ".join(_md(c) for c in section.columns) + " |",
                  "|---|" + "---:|" * (len(section.columns) - 1)]
        lines += ["| " + " | ".join(_md(v) for v in row) + " |" for row in section.rows]
    return lines


def _title(c: RunContents) -> str:
    return f"avgen run: {c.name}" + (" (untrained)" if c.untrained else "")


def _clip_line(clip: ExampleClip) -> str:
    text = f"class: {clip.label}"
    if clip.predicted is not None:
        text += f"; predicted class: {clip.predicted}"
    if clip.exemplar_id:
        text += f"; exemplar: training clip {clip.exemplar_id}"
    return text


def _per_class_html(per_class: Any) -> str:
    table = _per_class_table(per_class)
    if table is None:
        return ""
    header, rows = table
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<h3>Sound classifier accuracy per class</h3><table id=\"per-class\"><tr>{head}</tr>{body}</table>"


def _per_class_table(per_class: Any) -> tuple[list[str], list[list[str]]] | None:
    if not isinstance(per_class, dict) or not isinstance(per_class.get("per_class_accuracy"), dict):
        return None
    acc = per_class["per_class_accuracy"]
    kinds = list(acc)
    names = per_class.get("class_names") or (list(acc[kinds[0]]) if kinds else [])
    rows = [[name] + ["-" if acc[k].get(name) is None else format_number(acc[k][name]) for k in kinds] for name in names]
    return ["class"] + kinds, rows


def render_markdown(c: RunContents, examples: Sequence[ExampleClip] = ()) -> str:
    lines = [f"# {_title(c)}", ""]
    if c.untrained:
        lines += [f"**{UNTRAINED}**", ""]
    if c.warnings:
        lines += [f"**{COLLAPSED}**", ""] + [f"- **{_md(w)}**" for w in c.warnings] + [""]
    if isinstance(c.dataset, dict):
        splits = ", ".join(f"{k} {v}" for k, v in (c.dataset.get("splits") or {}).items())
        lines += [f"dataset **{c.dataset.get('name', '?')}**, {len(c.dataset.get('class_names') or [])} classes; clips: {splits}", ""]
    if c.dropped:
        lines += [_md(c.dropped), ""]
    if c.fit_line:
        lines += [f"fit: {_md(c.fit_line)}", ""]
    lines += ["## Metrics", ""]
    rows = metric_rows(c.metrics)
    if rows:
        lines += ["| metric | key | value |", "|---|---|---:|"]
        lines += [f"| {_md(comp)} | {_md(key)} | {format_number(value)} |" for comp, key, value in rows]
    else:
        lines.append("No metrics yet (run the evaluate stage).")
    for component, (keys, refs) in c.baselines.items():
        lines += ["", f"### {component} beside the reference baselines", "", BASELINES_NOTE, "",
                  "| reference | " + " | ".join(_md(k) for k in keys) + " |", "|---|" + "---:|" * len(keys)]
        lines += ["| " + _md(BASELINE_TITLES.get(ref, ref)) + " | "
                  + " | ".join(format_number(row[k]) if k in row else "" for k in keys) + " |" for ref, row in refs.items()]
    table = _per_class_table(c.per_class)
    if table is not None:
        header, body = table
        lines += ["", "### Sound classifier accuracy per class", "", "| " + " | ".join(header) + " |",
                  "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(_md(v) for v in row) + " |" for row in body]
    for section in c.sections:
        lines += _section_markdown(section)
    if c.figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{_caption(rel)}]({rel})" for rel in c.figures]
    if examples:
        lines += ["", "## Example clips"]
        for clip in examples:
            lines += ["", f"### {_md(clip.id)}", "", _md(_clip_line(clip)), ""]
            if clip.spectrogram:
                lines += [f"![spectrograms of {_md(clip.id)}]({clip.spectrogram})", ""]
            lines += [f"- {title}: <audio controls src=\"{clip.sounds[kind]}\"></audio> [{clip.sounds[kind]}]({clip.sounds[kind]})"
                      for kind, title in SOUND_KINDS if kind in clip.sounds]
    if c.recipe_text is not None:
        lines += ["", "## Recipe", "", "```toml", c.recipe_text.rstrip(), "```"]
    if c.environment is not None:
        lines += ["", "## Environment", "", "```json", json.dumps(c.environment, indent=2), "```"]
    return "\n".join(lines) + "\n"


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|")


def write_report(contents: RunContents) -> tuple[Path, Path]:
    """Write report.html (self-contained) and report.md (relative links) into the run directory, with the
    spectrograms of its example clips (figures/examples/)."""
    run_dir = contents.run_dir
    examples = example_clips(run_dir)
    for clip in examples:
        clip.spectrogram = write_spectrograms(run_dir, clip)
    html_path, md_path = run_dir / "report.html", run_dir / "report.md"
    write_text(html_path, render_html(contents, examples))
    write_text(md_path, render_markdown(contents, examples))
    return html_path, md_path
