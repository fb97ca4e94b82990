"""The CLI surface: --version, --help everywhere, list and show."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import avgen
from conftest import avgen_in_process, error_lines, run_avgen


def test_version() -> None:
    proc = run_avgen("--version")
    assert proc.returncode == 0 and avgen.__version__ in proc.stdout


def test_help_on_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    """The top-level help by `python -m avgen`, each command's help through the CLI entry point in this process
    (a subprocess per command cost 10 s of start-ups; test_help_version_list_and_show_import_no_torch checks
    the start-up itself)."""
    top = run_avgen("--help")
    assert top.returncode == 0
    commands = commands_of(top.stdout)
    assert {"list", "show", "run", "cache"} <= set(commands)
    for command in commands:
        code, out, lines = avgen_in_process(capsys, command, "--help")
        assert code == 0 and "Usage:" in out, (command, lines)


def test_list_shows_components_with_plugin(example_plugin: None) -> None:
    out = json.loads(run_avgen("list", "--json").stdout)
    rows = {(c["kind"], c["name"]): c["plugin"] for c in out["components"]}
    assert rows[("representation", "mel")] == "example"
    table = run_avgen("list", "representation")
    assert table.returncode == 0 and "mel" in table.stdout and "example" in table.stdout
    assert "mean_energy" not in table.stdout
    by_glob = json.loads(run_avgen("list", "m*", "--json").stdout)["components"]
    assert by_glob and all(c["name"].startswith("m") for c in by_glob)


def test_show_prints_params_table(example_plugin: None) -> None:
    proc = run_avgen("show", "mel")
    assert proc.returncode == 0
    for piece in ("n_mels", "int", "64", "mel bands", "Params"):
        assert piece in proc.stdout
    data = json.loads(run_avgen("show", "tones", "--json").stdout)
    assert data["kind"] == "dataset" and {p["field"] for p in data["params"]} >= {"classes", "seed"}


@pytest.mark.parametrize("args, expected", [
    (("show", "mell"), "did you mean 'mel'"),
    (("list", "widgets", "x*"), "unknown component kind 'widgets'"),
    (("list", "badkind"), "no component kind or name matches 'badkind'"),
    (("run",), "Missing argument"),
])
def test_bad_input_exits_2_with_one_line(args: tuple[str, ...], expected: str, example_plugin: None) -> None:
    proc = run_avgen(*args)
    assert proc.returncode == 2
    assert expected in proc.stderr and "Traceback" not in proc.stderr


def test_list_of_an_unknown_kind_alone_is_one_line_listing_the_kinds(example_plugin: None) -> None:
    """`avgen list badkind` used to print an empty table (the word read as a name pattern); globs still list."""
    from avgen._core.registry import KINDS

    proc = run_avgen("list", "badkind")
    assert proc.returncode == 2 and proc.stdout == ""
    assert error_lines(proc) == [f"error: no component kind or name matches 'badkind'; kinds are {', '.join(KINDS)} "
                                 "(`avgen list` shows every component)"]
    for args in (("encoder", "*resnet*"), ("*resnet*",)):
        found = json.loads(run_avgen("list", *args, "--json").stdout)["components"]
        assert found and all("resnet" in c["name"] and c["kind"] == "encoder" for c in found), args
    table = run_avgen("list", "*resnet*")
    assert table.returncode == 0 and "resnet50" in table.stdout


LIGHT_COMMANDS = """
import contextlib, io, json, sys
from avgen._core.cli import main

out = {}
for args in (["--help"], ["--version"], ["list"], ["list", "--json"], ["show", "stft"], ["show", "tones", "--json"]):
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        try:
            main(args)
        except SystemExit as exc:
            assert not exc.code, (args, exc.code)
    out[" ".join(args)] = buffer.getvalue()
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "avgen_audio", "avgen_vision", "avgen_plugin_example"))
print(json.dumps({"heavy": heavy, "out": out}))
"""


def test_help_version_list_and_show_import_no_torch(avgen_home: Path, example_plugin: None) -> None:
    """Once the component index is written (by the first command), these commands import no plugin and no torch,
    and print what the plugins themselves give (the first run's output is built from the loaded plugins)."""
    first = {args: run_avgen(*args.split()) for args in ("--help", "list", "list --json", "show stft", "show tones --json")}
    assert all(p.returncode == 0 for p in first.values()), {a: p.stderr[-500:] for a, p in first.items()}
    assert (avgen_home / "component-index.json").is_file()
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    proc = subprocess.run([sys.executable, "-c", LIGHT_COMMANDS], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["heavy"] == []
    out = result["out"]
    assert {"compare", "data", "weights"} <= set(commands_of(out["--help"]))  # commands that plugins add
    assert avgen.__version__ in out["--version"]
    for args, proc in first.items():
        assert out[args] == proc.stdout, args
    for piece in ("n_fft", "int", "2048", "Params", "card"):
        assert piece in out["show stft"]


def commands_of(help_text: str) -> list[str]:
    return [line.split()[0] for line in help_text.split("Commands:")[1].splitlines() if line.strip()]
