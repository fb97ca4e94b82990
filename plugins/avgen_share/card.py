"""The model card: README.md with the Hub's YAML metadata, what the model was trained on, its metrics,
intended use and the licences of everything it builds on (read from the components' cards)."""

from __future__ import annotations

import json
from typing import Any

import avgen

LICENCE_FILE = "LICENSE.md"


def component_rows(recipe: dict[str, Any]) -> list[dict[str, str]]:
    """One row per component the model was built from: kind, name, plugin, weights, licence."""
    sections = [("dataset", recipe.get("data")), ("encoder", recipe.get("encoder")),
                ("representation", recipe.get("representation")), ("generator", recipe.get("generator"))]
    sections += [("loss", spec) for spec in recipe.get("loss") or []]
    rows = []
    for kind, spec in sections:
        if not spec:
            continue
        name = spec["name"]
        try:
            component = avgen.get_component(kind, name)
            card, plugin = component.card.as_dict(), component.plugin
            licence = card.get("license") or distribution_licence(avgen.component_source(kind, name)["distribution"])
        except avgen.AvgenError:  # a component this machine does not have: say so, do not fail the export
            card, plugin, licence = {}, "not installed here", ""
        rows.append({"kind": kind, "name": name, "plugin": plugin, "weights": card.get("weights", ""),
                     "license": licence or "not stated by its plugin", "url": card.get("url", "")})
    return rows


def distribution_licence(distribution: str) -> str:
    """The licence a distribution declares (its License-Expression, else the first line of its License field),
    for a component whose card names none: the code's licence, as "MIT (the avgen distribution's)"."""
    import importlib.metadata

    try:
        meta = importlib.metadata.metadata(distribution)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return ""
    declared = (meta.get("License-Expression") or (meta.get("License") or "").strip().split("\n")[0]).strip()
    return f"{declared} (the {distribution} distribution's)" if declared and declared.upper() != "UNKNOWN" else ""


def model_card(config: dict[str, Any], metrics: dict[str, Any], rows: list[dict[str, str]], run_name: str,
               train_clips: int | None) -> str:
    """README.md of an exported model."""
    recipe = config["recipe"]
    data, generator = recipe.get("data", {}), recipe["generator"]["name"]
    classes = config["class_names"]
    tags = ["avgen", "audio", "video-to-audio", "foley", "visually-indicated-sounds", generator]
    front = ["---", "library_name: avgen", "license: other", "license_name: avgen-model-terms",
             f"license_link: {LICENCE_FILE}", "tags:", *[f"- {tag}" for tag in tags], "---", ""]
    detector = config.get("detector")
    how = (f"finds the contacts in a video with its `{detector}` detector and generates one sound of "
           f"{config['clip_seconds']} s at each (silence elsewhere) at {config['sample_rate']} Hz" if detector else
           f"watches {config['clip_seconds']} s windows of a video and generates their sound at {config['sample_rate']} Hz")
    lines = [
        f"# {run_name}: {generator} (avgen)", "",
        f"A visually indicated sound model exported by avgen {avgen.__version__} with `avgen export`: it {how}.", "",
        "## Use", "",
        "```bash",
        install_line(config),
        "avgen generate VIDEO.mp4 --model THIS_FOLDER            # raw sound" + (", one per contact" if detector else ""),
        *(["avgen generate VIDEO.mp4 --model THIS_FOLDER --mode windows  # a window every half clip instead"]
          if detector else []),
        "avgen generate VIDEO.mp4 --model THIS_FOLDER --exemplar # nearest exported exemplar clip"
        if config.get("exemplars") else
        "avgen generate VIDEO.mp4 --model THIS_FOLDER --library MY_SOUNDS  # exemplars from your own sounds",
        "```", "",
        "The folder is all `avgen generate --model` reads (no network, no training data); `SHA256SUMS` holds the "
        "SHA-256 of every file and avgen refuses a folder whose files do not match it. The encoder's pretrained "
        "weights are not in the folder: they come from where its plugin says (table below).", "",
        "## Training", "",
        f"- data: `{data.get('name')}`" + (f", {train_clips} training clips" if train_clips is not None else ""),
        f"- classes ({len(classes)}): {', '.join(classes)}",
        f"- encoder `{recipe['encoder']['name']}`, representation `{recipe['representation']['name']}`, "
        f"generator `{generator}`",
        "- losses: " + ", ".join(f"`{l['name']}` x {l.get('weight', 1.0)}" for l in recipe.get("loss") or []),
        "- the full resolved recipe: `recipe.toml` and `config.json`", "",
        "## Metrics (from the run, on its test split)", "",
    ]
    flat = _flatten(metrics)
    if flat:
        lines += ["| metric | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in flat], ""]
    else:
        lines += ["The run has no metrics.json.", ""]
    lines += [
        "## Intended use", "",
        "Sound design and research on video-to-sound generation: a first sound for short clips of objects being "
        f"hit or touched, in the classes above. The model knows only its {len(classes)} classes and the kind of "
        "video it was trained on; on other videos its sound is a guess. It is not a classifier to rely on, and "
        "its output is not a recording of what happened.", "",
        *licence_section(config, rows),
    ]
    return "\n".join(front + lines)


def install_line(config: dict[str, Any]) -> str:
    """The ``pip install`` of avgen and of every other distribution whose plugin the model's components come from."""
    pins = {"avgen": f"avgen=={avgen.__version__}"}
    for source in (config.get("components") or {}).values():
        dist = source.get("distribution") if isinstance(source, dict) else None
        if dist not in (None, "?", "avgen"):
            pins[dist] = f"{dist}=={source.get('version')}"
    return "pip install " + " ".join(f"'{pin}'" for pin in pins.values())


def licence_section(config: dict[str, Any], rows: list[dict[str, str]]) -> list[str]:
    """The licences of what the model builds on: the card's last section, and LICENSE.md."""
    lines = [
        "## Licences", "",
        "The weights are derived from the data and pretrained networks below; their terms apply to this model "
        "and to what it generates from exemplar audio.", "",
        "| part | name | plugin | weights | licence |", "|---|---|---|---|---|",
        *[f"| {r['kind']} | {r['name']} | {r['plugin']} | {r['weights'] or '-'} | {r['license']}"
          f"{' (' + r['url'] + ')' if r['url'] else ''} |" for r in rows],
        "",
    ]
    if config.get("exemplars"):
        lines += [f"`exemplars.safetensors` holds {config['exemplars']['count']} clips of the training data "
                  "(16-bit audio): the dataset's terms apply to them. Export with `--no-exemplars` to leave them "
                  "out and use `--library` instead.", ""]
    return lines


def licence_file(config: dict[str, Any], rows: list[dict[str, str]]) -> str:
    """LICENSE.md, the file the card's ``license_link`` names."""
    return "\n".join([f"# Terms of this model ({config['generator']['name']}, exported by avgen)", "",
                      *licence_section(config, rows)[2:]])


def _flatten(metrics: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    rows = []
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += _flatten(value, name + " ")
        elif isinstance(value, float):
            rows.append((name, f"{value:.4g}"))
        elif isinstance(value, (int, str, bool)):
            rows.append((name, str(value)))
        else:
            rows.append((name, json.dumps(value)[:80]))
    return rows
