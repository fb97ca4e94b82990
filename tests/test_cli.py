"""The CLI surface: --version, --help everywhere, list and show."""

from __future__ import annotations

import json

import pytest

import avgen
from conftest import error_lines, run_avgen


def test_version() -> None:
    proc = run_avgen("--version")
    assert proc.returncode == 0 and avgen.__version__ in proc.stdout


def test_help_on_every_command() -> None:
    top = run_avgen("--help")
    assert top.returncode == 0
    commands = [line.split()[0] for line in top.stdout.split("Commands:")[1].splitlines() if line.strip()]
    assert {"list", "show", "run", "cache"} <= set(commands)
    for command in commands:
        proc = run_avgen(command, "--help")
        assert proc.returncode == 0 and "Usage:" in proc.stdout, command


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
    from avgen.registry import KINDS

    proc = run_avgen("list", "badkind")
    assert proc.returncode == 2 and proc.stdout == ""
    assert error_lines(proc) == [f"error: no component kind or name matches 'badkind'; kinds are {', '.join(KINDS)} "
                                 "(`avgen list` shows every component)"]
    for args in (("encoder", "*resnet*"), ("*resnet*",)):
        found = json.loads(run_avgen("list", *args, "--json").stdout)["components"]
        assert found and all("resnet" in c["name"] and c["kind"] == "encoder" for c in found), args
    table = run_avgen("list", "*resnet*")
    assert table.returncode == 0 and "resnet50" in table.stdout
