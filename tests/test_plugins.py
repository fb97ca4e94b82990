"""Plugin discovery through entry points: broken plugins, duplicates, misspelled hooks, pip install."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import EXAMPLE, error_lines, run_avgen


def fake_distribution(site: Path, dist: str, module: str, source: str, ep_name: str | None = None) -> None:
    """Write an installed-looking distribution (dist-info + module) into ``site``."""
    site.mkdir(parents=True, exist_ok=True)
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[avgen]\n{ep_name or module} = {module}\n")
    (site / f"{module}.py").write_text(source)


def with_path(site: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture
def debug_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """``debug_cli(site, *args)``: (exit code, stderr) of ``avgen --debug ARGS`` run in this process with the fake
    distributions in ``site`` on sys.path, the plugins loaded afresh (and again without them when the test ends)."""
    import importlib

    from avgen._core import cli
    from avgen._core.plugins import reset

    def run(site: Path, *args: str) -> tuple[int, str]:
        monkeypatch.syspath_prepend(str(site))
        monkeypatch.setenv("AVGEN_HOME", str(tmp_path / "debug_home"))
        importlib.invalidate_caches()
        reset()
        capsys.readouterr()
        try:
            cli.main(["--debug", *args])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        return code, capsys.readouterr().err

    yield run
    monkeypatch.undo()
    for name in ("broken_plugin", "gru_plugin"):
        sys.modules.pop(name, None)
    importlib.invalidate_caches()
    reset()


def test_broken_plugin_is_reported_and_the_rest_load(tmp_path: Path, example_plugin: None, debug_cli) -> None:
    site = tmp_path / "site"
    fake_distribution(site, "broken-plugin", "broken_plugin", "import no_such_module_xyz\n")
    proc = run_avgen("list", "--json", env=with_path(site))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    broken = {p["name"]: p["error"] for p in out["broken_plugins"]}
    assert "no_such_module_xyz" in broken["broken_plugin"]
    assert any(c["name"] == "mel" and c["plugin"] == "example" for c in out["components"])
    table = run_avgen("list", env=with_path(site))
    assert "broken plugin" in table.stdout and "broken_plugin" in table.stdout
    assert "avgen --debug list" in table.stdout  # how to see where it failed
    code, err = debug_cli(site, "list")
    assert code == 0 and "Traceback" in err, err
    assert str(site / "broken_plugin") in err and "import no_such_module_xyz" in err, err
    strict = run_avgen("list", "--strict", env=with_path(site))  # what a plugin's own CI runs
    assert strict.returncode == 2 and "broken_plugin" in strict.stdout, strict.stderr
    assert "1 plugin(s) failed to load: plugin 'broken_plugin' (broken-plugin 0.1) failed to load: " \
           "ModuleNotFoundError: No module named 'no_such_module_xyz'" in strict.stderr
    assert run_avgen("list", "--strict").returncode == 0  # nothing broken


def test_an_unknown_component_names_the_plugin_that_failed_to_load(tmp_path: Path, example_plugin: None,
                                                                   debug_cli) -> None:
    """A recipe (or `avgen show`) asking for a component of a plugin that did not import says which plugin and why."""
    from conftest import TINY_RECIPE

    site = tmp_path / "site"
    fake_distribution(site, "gru-plugin", "gru_plugin", "import no_such_module_xyz\n")
    recipe = tmp_path / "gru.toml"
    recipe.write_text(TINY_RECIPE.format(root=str(tmp_path / "data")).replace('name = "can_lstm"', 'name = "gru_regressor"'))
    env = {**with_path(site), "AVGEN_HOME": str(tmp_path / "home")}
    for args in (["run", str(recipe), "--out", str(tmp_path / "runs")], ["show", "gru_regressor"]):
        proc = run_avgen(*args, env=env)
        lines = error_lines(proc)
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert "gru_regressor" in lines[0] and "plugin 'gru_plugin' (gru-plugin 0.1) failed to load" in lines[0], lines
        assert "no_such_module_xyz" in lines[0]
    assert not (tmp_path / "runs").exists()
    code, err = debug_cli(site, "show", "gru_regressor")  # the plugin's own file and line
    assert code == 2 and str(site / "gru_plugin") in err, err
    assert "line 1" in err and "import no_such_module_xyz" in err, err


def test_misspelled_hook_marks_plugin_broken(tmp_path: Path) -> None:
    site = tmp_path / "site"
    source = "import avgen\n@avgen.hookimpl\ndef register_encoder(register):\n    pass\n"
    fake_distribution(site, "typo-plugin", "typo_plugin", source)
    out = json.loads(run_avgen("list", "--json", env=with_path(site)).stdout)
    broken = {p["name"]: p["error"] for p in out["broken_plugins"]}
    assert "register_encoder" in broken["typo_plugin"]


def test_duplicate_component_names_both_plugins(tmp_path: Path, example_plugin: None) -> None:
    site = tmp_path / "site"
    source = (
        "import avgen\nfrom avgen._core.registry import NoParams\n"
        "@avgen.hookimpl\ndef register_metrics(register):\n"
        "    register('mean_energy', lambda p, context: None, NoParams, summary='clash')\n"
    )
    fake_distribution(site, "clash-plugin", "clash_plugin", source)
    proc = run_avgen("list", env=with_path(site))
    assert proc.returncode == 2
    lines = error_lines(proc)
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "'example'" in lines[0] and "'clash_plugin'" in lines[0]


def test_allow_list_env_var_limits_loading(example_plugin: None) -> None:
    out = json.loads(run_avgen("list", "--json", env={"AVGEN_LOAD_PLUGINS": "example"}).stdout)
    assert {c["plugin"] for c in out["components"]} == {"example"}


def test_pip_installed_plugin_appears_and_is_used(tmp_path: Path) -> None:
    """pip-install the example package into a fresh target folder; avgen finds it there."""
    target = tmp_path / "target"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(EXAMPLE)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (target / "avgen_plugin_example" / "components.py").is_file()
    env = with_path(target)
    code = "import avgen_plugin_example, json; print(avgen_plugin_example.__file__)"
    where = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True)
    assert where.stdout.strip().startswith(str(target))
    out = json.loads(run_avgen("list", "--json", env=env).stdout)
    mine = {(c["kind"], c["name"]) for c in out["components"] if c["plugin"] == "example"}
    assert {("representation", "mel"), ("metric", "mean_energy"), ("dataset", "tones"), ("encoder", "mean_color")} <= mine


# ---------------------------------------------------------------- the component index (avgen/_core/index.py)

WIDGET_INIT = """
import avgen
from avgen._core.registry import NoParams
from widget_plugin.parts import SUMMARY, widget_command


@avgen.hookimpl
def register_metrics(register):
    register("widget", lambda p, context: None, NoParams, summary=SUMMARY)


@avgen.hookimpl
def register_commands(cli):
    cli.add_command(widget_command)
"""

WIDGET_PARTS = """
import click

SUMMARY = {summary!r}


@click.command("widget-cmd")
def widget_command():
    '''Print the widget's summary.'''
    click.echo("widget says " + SUMMARY)
"""


def install_widget(site: Path, summary: str) -> None:
    """An installed-looking plugin package: a metric 'widget' and a command 'widget-cmd'."""
    fake_distribution(site, "widget-plugin", "widget_plugin", "", ep_name="widget")
    (site / "widget_plugin.py").unlink()
    (site / "widget_plugin").mkdir()
    (site / "widget_plugin" / "__init__.py").write_text(WIDGET_INIT)
    (site / "widget_plugin" / "parts.py").write_text(WIDGET_PARTS.format(summary=summary))


def widgets(env: dict[str, str]) -> tuple[list[str], list[str]]:
    """(summaries of the 'widget' metric in `avgen list --json`, commands in `avgen --help`)."""
    listed = run_avgen("list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr[-2000:]
    help_text = run_avgen("--help", env=env)
    assert help_text.returncode == 0, help_text.stderr[-2000:]
    commands = [line.split()[0] for line in help_text.stdout.split("Commands:")[1].splitlines() if line.strip()]
    return [c["summary"] for c in json.loads(listed.stdout)["components"] if c["name"] == "widget"], commands


# Only plugins that import no torch are loaded in the index tests (the widget, share and serve), so that each
# rebuild of the index costs a fraction of a second rather than the 4-5 s of importing every shipped plugin.
LIGHT_PLUGINS = {"AVGEN_LOAD_PLUGINS": "widget,share,serve"}


def test_the_component_index_follows_plugins_installed_edited_and_removed(tmp_path: Path, avgen_home: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    env = {**with_path(site), **LIGHT_PLUGINS}
    summaries, commands = widgets(env)
    assert summaries == [] and "widget-cmd" not in commands
    index = avgen_home / "component-index.json"
    assert index.is_file()

    install_widget(site, "first")
    for _ in range(2):  # built from the plugins, then read from the index
        summaries, commands = widgets(env)
        assert summaries == ["first"] and "widget-cmd" in commands
    ran = run_avgen("widget-cmd", env=env)
    assert ran.returncode == 0 and ran.stdout.strip() == "widget says first"

    (site / "widget_plugin" / "parts.py").write_text(WIDGET_PARTS.format(summary="second edition"))
    for _ in range(2):
        assert widgets(env)[0] == ["second edition"]

    shutil.rmtree(site / "widget_plugin")
    shutil.rmtree(site / "widget-plugin-0.1.dist-info")
    for _ in range(2):
        summaries, commands = widgets(env)
        assert summaries == [] and "widget-cmd" not in commands


@pytest.fixture(scope="module")
def light_site(tmp_path_factory) -> dict[str, str]:
    """The environment of the damaged-index tests: the widget plugin installed, only light plugins loaded."""
    site = tmp_path_factory.mktemp("light_site")
    install_widget(site, "first")
    return {**with_path(site), **LIGHT_PLUGINS}


@pytest.fixture(scope="module")
def listed_with_a_fresh_index(tmp_path_factory, light_site: dict[str, str]) -> tuple[str, str]:
    """(``avgen list --json`` output, the component index it wrote) in a new AVGEN_HOME, once for the module."""
    home = tmp_path_factory.mktemp("index_home")
    reference = run_avgen("list", "--json", env={**light_site, "AVGEN_HOME": str(home), "AVGEN_CACHE": ""})
    assert reference.returncode == 0, reference.stderr[-2000:]
    assert json.loads(reference.stdout)["components"], "the damage below needs a component in the index"
    return reference.stdout, (home / "component-index.json").read_text()


@pytest.mark.parametrize("damage", ["not json", "truncated", "wrong type", "missing field", "a folder", "home is a file"])
def test_a_damaged_component_index_never_breaks_the_cli(tmp_path: Path, avgen_home: Path, damage: str,
                                                        light_site: dict[str, str],
                                                        listed_with_a_fresh_index: tuple[str, str]) -> None:
    listed, text = listed_with_a_fresh_index
    index = avgen_home / "component-index.json"
    avgen_home.mkdir(parents=True, exist_ok=True)
    index.write_text(text)
    data = json.loads(text)
    env = dict(light_site)
    if damage == "not json":
        index.write_bytes(b"\x00\xffnot an index")
    elif damage == "truncated":
        index.write_text(text[: len(text) // 2])
    elif damage == "wrong type":  # the key still matches, a value does not
        data["components"][0]["name"] = 5
        index.write_text(json.dumps(data))
    elif damage == "missing field":
        del data["components"][0]["params"]
        index.write_text(json.dumps(data))
    elif damage == "a folder":
        index.unlink()
        index.mkdir()
    else:
        home = tmp_path / "home_file"
        home.write_text("not a folder")
        env["AVGEN_HOME"] = str(home)
    unusable = damage in ("a folder", "home is a file")  # nothing can be written: a second call sees the same state
    for _ in range(1 if unusable else 2):  # else the first call rewrites the index and the second reads it
        proc = run_avgen("list", "--json", env=env)
        assert proc.returncode == 0 and proc.stdout == listed, proc.stderr[-2000:]
        helped = run_avgen("--help", env=env)
        assert helped.returncode == 0 and "widget-cmd" in helped.stdout, helped.stderr[-2000:]
    if not unusable:
        assert json.loads(index.read_text())["key"] == data["key"]  # rewritten whole
