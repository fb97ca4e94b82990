"""Plugin discovery through entry points: broken plugins, duplicates, misspelled hooks, pip install."""

from __future__ import annotations

import json
import os
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


def test_broken_plugin_is_reported_and_the_rest_load(tmp_path: Path, example_plugin: None) -> None:
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
        "import avgen\nfrom avgen.registry import NoParams\n"
        "@avgen.hookimpl\ndef register_metrics(register):\n"
        "    register('mean_energy', lambda p: None, NoParams, summary='clash')\n"
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
