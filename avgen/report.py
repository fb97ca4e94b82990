"""The report stage: ``report.html`` (self-contained, opens from disk) and ``report.md`` of a run.

Both hold the warnings (a collapsed model, an untrained one), the metrics table (every value
exactly as in ``metrics.json``), the reference baselines beside the run, the fit line, the
annotation rows the dataset dropped, the figures, the example clips (spectrograms of ground
truth / raw / exemplar and audio players) and the recipe. Anything a run lacks (no generator,
no figures, no metrics yet) is left out.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avgen.atomic import atomic_path, write_text

SOUND_KINDS: tuple[tuple[str, str], ...] = (("real", "ground truth"), ("raw", "raw sound"), ("exemplar", "exemplar sound"))

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


# ---------------------------------------------------------------- shared helpers (also used by `avgen compare`)


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


def read_recipe(run_dir: Path) -> dict[str, Any]:
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
    from avgen.baseline import compare_line

    fit = _stage_info(run_dir, "fit")
    if not isinstance(fit.get("val"), dict) or not isinstance(fit.get("baseline_val"), dict):
        return ""
    return compare_line(fit["val"], fit["baseline_val"], int(fit.get("best_epoch", 0)))


def dropped_rows_line(run_dir: Path) -> str:
    """'annotation rows dropped: 72 (train 40, test 32): material None carries no class 72; see skipped.txt', or ''."""
    prepare = _stage_info(run_dir, "prepare")
    counts = prepare.get("skipped_rows")
    if not isinstance(counts, dict) or not counts:
        return ""
    total = sum(int(v) for v in counts.values())
    line = f"annotation rows dropped: {total} (" + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")"
    reasons = prepare.get("skipped_reasons")
    if isinstance(reasons, dict) and reasons:
        line += ": " + "; ".join(f"{why} {n}" for why, n in reasons.items())
    return line + "; each row is listed in skipped.txt"


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


@dataclass
class ExampleClip:
    """One example test clip: its sounds (kind -> wav path, relative to the run) and labels."""

    id: str
    label: str
    predicted: str | None
    exemplar_id: str | None
    sounds: dict[str, str] = field(default_factory=dict)
    spectrogram: str | None = None  # relative path of the side-by-side PNG


@dataclass
class RunContents:
    run_dir: Path
    name: str
    untrained: bool
    warnings: list[str]
    fit_line: str
    dropped: str
    recipe_text: str | None
    environment: Any
    dataset: Any
    metrics: dict[str, Any]
    figures: list[str]  # relative paths, loss curve first
    per_class: Any
    examples: list[ExampleClip]
    listening: dict[str, Any] = field(default_factory=dict)  # avgen.listening.mos, or {"error": line}


def collect(run_dir: Path) -> RunContents:
    """Read what the report shows from a run directory; missing parts become empty."""
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
        figures=figures,
        per_class=read_json(figures_dir / "classifier_per_class.json"),
        examples=example_clips(run_dir),
        listening=_listening(run_dir),
    )


LISTENING_NOTE = ("Blind MUSHRA-style ratings from 0 to 100 (avgen serve, docs/serve.md); the reference is the hidden "
                  "real sound. MOS = mean opinion score, with the half-width of its 95 % confidence interval (t).")


def _listening(run_dir: Path) -> dict[str, Any]:
    from avgen.errors import AvgenError
    from avgen.listening import mos

    try:
        return mos(run_dir)
    except AvgenError as exc:
        return {"error": str(exc)}


def _listening_rows(listening: dict[str, Any]) -> list[list[str]]:
    """[system, MOS, 95 % CI, n] per rated system."""
    return [[system, f"{s['mean']:.1f}", "-" if s["ci95"] is None else f"± {s['ci95']:.1f}", str(s["n"])]
            for system, s in listening.items() if system != "error"]


def example_clips(run_dir: Path, ids: list[str] | None = None) -> list[ExampleClip]:
    """The run's example clips (generated/index.json "examples", or the test clips ``ids``) with the sounds it wrote."""
    run_dir = Path(run_dir)
    index = read_json(run_dir / "generated" / "index.json")
    if not isinstance(index, dict):
        return []
    by_id = {c.get("id"): c for c in index.get("clips", []) if isinstance(c, dict)}
    class_names = (read_json(run_dir / "dataset.json") or {}).get("class_names") or []
    out = []
    for clip_id in index.get("examples", []) if ids is None else ids:
        clip = by_id.get(clip_id, {})
        predicted = clip.get("predicted")
        sounds = {}
        for kind, _ in SOUND_KINDS:
            rel = f"generated/real/{clip_id}.wav" if kind == "real" else clip.get(kind, f"generated/{kind}/{clip_id}.wav")
            if (run_dir / rel).is_file():
                sounds[kind] = rel
        if not sounds:
            continue
        out.append(ExampleClip(
            id=str(clip_id),
            label=str(clip.get("class") if clip.get("class") is not None else clip.get("label", "?")),
            predicted=(class_names[predicted] if isinstance(predicted, int) and 0 <= predicted < len(class_names)
                       else None if predicted is None else str(predicted)),
            exemplar_id=clip.get("exemplar_id"),
            sounds=sounds,
        ))
    return out


# ---------------------------------------------------------------- spectrograms


def spectrogram_db(wave: Any, n_fft: int = 1024, hop: int = 256) -> Any:
    """Log-magnitude STFT in dB [bins, frames] of a mono waveform (torch.stft, Hann window)."""
    import torch

    x = torch.as_tensor(wave, dtype=torch.float32).reshape(-1)
    if x.numel() <= n_fft // 2:
        x = torch.nn.functional.pad(x, (0, n_fft // 2 + 1 - x.numel()))
    spec = torch.stft(x, n_fft, hop, window=torch.hann_window(n_fft), center=True, pad_mode="constant", return_complex=True)
    return (20.0 * torch.log10(spec.abs().clamp_min(1e-6))).numpy()


def spectrogram_panel(title: str, wav: Path) -> tuple[str, Any, int, int]:
    """(title, dB spectrogram of the mono mix, sample rate, samples) of a sound file, for ``save_spectrograms``."""
    import soundfile as sf

    wave, rate = sf.read(str(wav), dtype="float32", always_2d=True)
    return title, spectrogram_db(wave.mean(axis=1)), rate, len(wave)


def save_spectrograms(path: Path, panels: list[tuple[str, Any, int, int]], top: float | None = None,
                      width: float = 4.0) -> None:
    """Spectrogram panels side by side as one PNG, coloured over the 80 dB below ``top`` (default: the loudest panel)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    top = max(float(p[1].max()) for p in panels) if top is None else top
    fig = Figure(figsize=(width * len(panels), 3.2))
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.08 if len(panels) > 1 else 0.16, right=0.9 if len(panels) > 1 else 0.8,
                        bottom=0.18, top=0.88, wspace=0.25)
    for i, (title, db, rate, length) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        image = ax.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=top - 80.0, vmax=top,
                          extent=(0.0, length / rate, 0.0, rate / 2000.0))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("time (s)")
        if i == 0:
            ax.set_ylabel("frequency (kHz)")
    fig.colorbar(image, ax=fig.axes, fraction=0.02 if len(panels) > 1 else 0.06, pad=0.02, label="dB")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)


def write_spectrograms(run_dir: Path, clip: ExampleClip) -> str:
    """Ground truth / raw / exemplar spectrograms side by side as one PNG; returns its relative path."""
    panels = [spectrogram_panel(title, run_dir / clip.sounds[kind]) for kind, title in SOUND_KINDS if kind in clip.sounds]
    rel = f"figures/examples/{safe_name(clip.id)}.png"
    save_spectrograms(run_dir / rel, panels)
    return rel


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text) or "clip"


# ---------------------------------------------------------------- writers


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


def render_html(c: RunContents) -> str:
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
    for component, (keys, table) in baseline_rows(c.metrics).items():
        head = "<th>reference</th>" + "".join(f"<th>{e(k)}</th>" for k in keys)
        body = "".join(
            f"<tr class=\"{'run' if ref == 'this run' else 'baseline'}\"><td>{e(BASELINE_TITLES.get(ref, ref))}</td>"
            + "".join(f"<td class=\"num\">{e(format_number(row[k])) if k in row else ''}</td>" for k in keys) + "</tr>"
            for ref, row in table.items()
        )
        parts.append(f"<h3>{e(component)} beside the reference baselines</h3><p>{e(BASELINES_NOTE)}</p>"
                     f"<table class=\"baselines\" id=\"baselines-{e(component)}\"><tr>{head}</tr>{body}</table>")
    parts.append(_per_class_html(c.per_class))
    if c.listening:
        rows = "".join("<tr>" + "".join(f"<td>{e(v)}</td>" for v in row) + "</tr>" for row in _listening_rows(c.listening))
        error = f"<p class=\"warning\">{e(c.listening['error'])}</p>" if "error" in c.listening else ""
        parts.append(f"<h2>Listening test</h2><p>{e(LISTENING_NOTE)}</p>{error}"
                     + (f"<table id=\"listening\"><tr><th>system</th><th>MOS</th><th>95 % CI</th><th>n</th></tr>{rows}</table>"
                        if rows else ""))
    if c.figures:
        parts.append("<h2>Figures</h2>")
        parts.extend(
            f"<figure><img src=\"{data_uri(c.run_dir / rel, 'image/png')}\" alt=\"{e(_caption(rel))}\">"
            f"<figcaption>{e(_caption(rel))}</figcaption></figure>"
            for rel in c.figures
        )
    if c.examples:
        parts.append("<h2>Example clips</h2>")
        for clip in c.examples:
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


def render_markdown(c: RunContents) -> str:
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
    for component, (keys, refs) in baseline_rows(c.metrics).items():
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
    if c.listening:
        lines += ["", "## Listening test", "", LISTENING_NOTE, ""]
        if "error" in c.listening:
            lines += [f"**{_md(c.listening['error'])}**", ""]
        if rated := _listening_rows(c.listening):
            lines += ["| system | MOS | 95 % CI | n |", "|---|---:|---:|---:|"]
            lines += ["| " + " | ".join(row) + " |" for row in rated]
    if c.figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{_caption(rel)}]({rel})" for rel in c.figures]
    if c.examples:
        lines += ["", "## Example clips"]
        for clip in c.examples:
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


def write_report(run_dir: Path) -> tuple[Path, Path]:
    """Write report.html (self-contained) and report.md (relative links) into run_dir."""
    run_dir = Path(run_dir)
    contents = collect(run_dir)
    for clip in contents.examples:
        clip.spectrogram = write_spectrograms(run_dir, clip)
    html_path, md_path = run_dir / "report.html", run_dir / "report.md"
    write_text(html_path, render_html(contents))
    write_text(md_path, render_markdown(contents))
    return html_path, md_path
