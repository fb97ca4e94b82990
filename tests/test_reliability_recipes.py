"""Bad recipes, generated: every mutation of a shipped recipe gives exit code 2 and one line, and no
run directory that a later run could misread.

The bulk drives `avgen run` in-process (click's CliRunner on avgen._core.cli's root group); a few real
subprocess runs check the same through `python -m avgen`.
"""

from __future__ import annotations

import json
import math
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from avgen._core.cli import cli
from avgen._core.errors import RecipeError
from avgen._core.rundir import toml_string, dump_toml
from avgen._core.recipe import EvalSection, Recipe, RunSection, TrainParams
from avgen._core.recipefiles import load_recipes
from avgen._core.plugins import list_components
from avgen._core.registry import KINDS
from conftest import REPO, error_lines, run_avgen

SHIPPED = {path.name: tomllib.loads(path.read_text(encoding="utf-8")) for path in sorted((REPO / "recipes").glob("*.toml"))}
EXAMPLES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Sections whose numbers are bounded above as well as below (the core's, avgen_datasets', the encoders' and
# generators'). The representation, loss and metric plugins' Params still take huge values (e.g. n_fft).
BOUNDED_SECTIONS = {"run", "data", "encoder", "generator", "loss", "train", "eval"}
FREE_TEXT = {"root", "weights", "out"}  # str fields where any text validates (paths)
SIGNED = {"offset"}  # numbers that may be negative


def field_types() -> dict[str, set[Any]]:
    """Field name -> the annotations it has in the core sections and in every component's Params."""
    models = [RunSection, TrainParams, EvalSection] + [c.params for kind in KINDS for c in list_components(kind)]
    types: dict[str, set[Any]] = {}
    for model in models:
        for name, field in model.model_fields.items():
            types.setdefault(name, set()).add(field.annotation)
    return types


FIELD_TYPES = field_types()
KNOWN = set(FIELD_TYPES) | set(Recipe.model_fields) | {"variant", "name", "weight"}  # every name a table may hold
INT_ONLY = {name for name, types in FIELD_TYPES.items() if types == {int}}  # 2.5 is wrong wherever they appear


def dump(raw: dict[str, Any]) -> str:
    """A recipe mapping as TOML, any key and any text: avgen's own writer of recipe.toml."""
    return dump_toml(raw, header=False)


# ---------------------------------------------------------------- where a mutation can go


def leaves(node: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
    """(path, value) of every scalar or list-of-scalars value, inside tables and lists of tables."""
    if isinstance(node, dict):
        return [leaf for key, value in node.items() for leaf in leaves(value, path + (key,))]
    if isinstance(node, list) and node and all(isinstance(v, dict) for v in node):
        return [leaf for i, value in enumerate(node) for leaf in leaves(value, path + (i,))]
    return [(path, node)]


def tables(node: Any, path: tuple = ()) -> list[tuple]:
    """Paths of every table (the top level included)."""
    found = [path] if isinstance(node, dict) else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += tables(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += tables(value, path + (i,))
    return found


def section_of(path: tuple) -> str:
    """The recipe section a leaf belongs to ('variant.0.generator.hidden' -> generator)."""
    names = [p for p in path if isinstance(p, str)]
    return names[1] if names[0] == "variant" and len(names) > 2 else names[0]


def field_of(path: tuple) -> str:
    return [p for p in path if isinstance(p, str)][-1]


def get_in(raw: dict, path: tuple) -> Any:
    for part in path:
        raw = raw[part]
    return raw


def set_in(raw: dict, path: tuple, value: Any) -> None:
    get_in(raw, path[:-1])[path[-1]] = value


def copy(node: Any) -> Any:
    """A deep copy of a raw recipe (tables, lists, scalars)."""
    if isinstance(node, dict):
        return {k: copy(v) for k, v in node.items()}
    if isinstance(node, list):
        return [copy(v) for v in node]
    return node


def numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ---------------------------------------------------------------- mutations that must be rejected

# Fields that name a size, a rate or a count: zero is never valid.
SIZES = {"sample_rate", "clip_seconds", "videos", "fps", "hidden", "layers", "n_fft", "hop_length", "batch_size",
         "lr", "top_k", "n_bands"}

non_numeric_text = st.text(max_size=12).map(lambda t: "x" + t)
tables_values = st.dictionaries(st.text(max_size=5), st.integers(), min_size=1, max_size=2)
dates = st.dates()


def wrong_value(current: Any, field: str) -> st.SearchStrategy:
    """Values of a type the field cannot take, even with pydantic's lax coercion."""
    if isinstance(current, bool):
        return st.one_of(non_numeric_text, st.integers(2, 10**6), tables_values, dates, st.just([1, 2]))
    if isinstance(current, int):
        fractions = st.floats(0.1, 0.9).map(lambda f: 1 + f) if field in INT_ONLY else st.nothing()
        return st.one_of(non_numeric_text, fractions, tables_values, dates)
    if isinstance(current, float):
        return st.one_of(non_numeric_text, tables_values, dates, st.just([0.5]))
    if isinstance(current, str):
        return st.one_of(st.integers(2, 10**6), tables_values, dates, st.lists(st.integers(), min_size=1, max_size=3))
    if isinstance(current, list):
        return st.one_of(non_numeric_text, st.integers(), tables_values, dates)
    raise AssertionError(f"unexpected leaf {current!r}")


@st.composite
def mutated_recipe(draw: st.DrawFn) -> tuple[str, dict[str, Any], str]:
    """(recipe name, a raw recipe that no validation may accept, what was done to it)."""
    name = draw(st.sampled_from(sorted(SHIPPED)))
    raw = copy(SHIPPED[name])
    kind = draw(st.sampled_from(["wrong_type", "unknown_key", "missing", "huge", "negative", "zero", "unicode",
                                 "not_finite"]))
    all_leaves = leaves(raw)
    if kind == "wrong_type":
        path, value = draw(st.sampled_from(all_leaves))
        new = draw(wrong_value(value, field_of(path)))
    elif kind == "unknown_key":
        table = draw(st.sampled_from(tables(raw)))
        key = draw(st.text(min_size=1, max_size=10).filter(lambda k: k not in KNOWN))
        path, new = table + (key,), draw(st.one_of(st.integers(), st.text(max_size=5), st.booleans()))
    elif kind == "missing":
        choices = [("data",), ("encoder",), ("representation",), ("loss",)]
        choices += [p for p, _ in all_leaves if p[-1] == "name" and p[0] != "run"  # a component's name
                    and not (p[0] == "variant" and len(p) == 4)]  # (a variant's table without one merges)
        path = draw(st.sampled_from(choices))
        del get_in(raw, path[:-1])[path[-1]]
        return name, raw, f"delete {'.'.join(map(str, path))}"
    elif kind in ("huge", "negative", "zero"):
        if kind == "huge":
            candidates = [p for p, v in all_leaves if numeric(v) and section_of(p) in BOUNDED_SECTIONS]
            new = draw(st.one_of(st.integers(10**10, 2**63 - 1), st.integers(-(2**63), -(10**10)),
                                 st.floats(1e10, 1e300), st.floats(-1e300, -1e10)))
        elif kind == "negative":
            candidates = [p for p, v in all_leaves if numeric(v) and field_of(p) not in SIGNED]
            new = draw(st.one_of(st.integers(-(10**9), -1), st.floats(-1e9, -1e-3)))
        else:
            candidates = [p for p, v in all_leaves if field_of(p) in SIZES]
            new = draw(st.sampled_from([0, 0.0]))
        path = draw(st.sampled_from(candidates))
    elif kind == "unicode":
        candidates = [p for p, v in all_leaves if isinstance(v, str) and field_of(p) not in FREE_TEXT]
        path = draw(st.sampled_from(candidates))
        odd = draw(st.characters(min_codepoint=0x80, exclude_categories=("Cs",)))
        new = draw(st.text(max_size=8)) + odd + draw(st.text(max_size=8))
    else:
        candidates = [p for p, v in all_leaves if numeric(v)]
        path, new = draw(st.sampled_from(candidates)), draw(st.sampled_from([math.inf, -math.inf, math.nan]))
    set_in(raw, path, new)
    return name, raw, f"{kind}: {'.'.join(map(str, path))} = {new!r}"


# ---------------------------------------------------------------- the checks


def invoke(*args: str) -> Any:
    """`avgen ARGS` in this process; returns click's Result (stdout and stderr apart)."""
    return CliRunner().invoke(cli, list(args), env={"COLUMNS": "200", "NO_COLOR": "1"})


def assert_one_line_exit_2(result: Any, context: str) -> str:
    assert result.exit_code == 2, (context, result.exit_code, result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), (context, result.stderr)
    assert "Traceback" not in result.output and "Traceback" not in result.stderr, context
    return lines[0]


def assert_error_line(result: Any, context: str) -> str:
    """A run that failed after it started: exit 2, no traceback, one 'error:' line and it comes last."""
    assert result.exit_code == 2, (context, result.exit_code, result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], (context, result.stderr)
    assert "Traceback" not in result.stderr, context
    return errors[0]


def check_rejected(path: Path, out: Path, *args: str, context: str = "") -> str:
    """The recipe fails validation (before anything runs) and the CLI says so in one line."""
    with pytest.raises(RecipeError):
        load_recipes(path, [a for flag, a in zip(args[::2], args[1::2]) if flag == "--set"])
    line = assert_one_line_exit_2(invoke("run", str(path), "--out", str(out), *args), context)
    assert not out.exists(), f"{context}: a rejected recipe created {out}"
    return line


def test_shipped_recipes_are_valid_and_train_a_generator() -> None:
    """The mutations below assume it: a shipped recipe loads, and each of its runs has a generator."""
    assert len(SHIPPED) >= 9
    for name in SHIPPED:
        for recipe in load_recipes(REPO / "recipes" / name):
            assert recipe.generator is not None and recipe.encoder and recipe.representation and recipe.loss, name


def check_mutation(case: tuple[str, dict[str, Any], str]) -> None:
    name, raw, what = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(dump(raw), encoding="utf-8")
        check_rejected(path, Path(tmp) / "runs", context=f"{name}: {what}")


@settings(EXAMPLES, max_examples=100)
@given(case=mutated_recipe())
def test_mutated_recipes_exit_2_with_one_line(case: tuple[str, dict[str, Any], str], avgen_home: Path) -> None:
    check_mutation(case)


@pytest.mark.slow
@settings(EXAMPLES, max_examples=2000)
@given(case=mutated_recipe())
def test_many_mutated_recipes_exit_2_with_one_line(case: tuple[str, dict[str, Any], str], avgen_home: Path) -> None:
    check_mutation(case)


@EXAMPLES
@given(name=st.sampled_from(sorted(SHIPPED)), data=st.data())
def test_set_overrides_with_unknown_unicode_keys_exit_2(name: str, data: st.DataObject, avgen_home: Path) -> None:
    raw = SHIPPED[name]
    table = data.draw(st.sampled_from([t for t in tables(raw) if all(isinstance(p, str) for p in t)]))
    key = data.draw(st.text(st.characters(exclude_characters=".=", exclude_categories=("Cs",)), min_size=1, max_size=10)
                    .filter(lambda k: k.strip() == k and k not in KNOWN))
    value = data.draw(st.text(max_size=10))
    override = ".".join([*table, key]) + "=" + value
    with tempfile.TemporaryDirectory() as tmp:
        check_rejected(REPO / "recipes" / name, Path(tmp) / "runs", "--set", override, context=f"--set {override!r}")


@EXAMPLES
@given(name=st.sampled_from(sorted(SHIPPED)), data=st.data())
def test_invalid_toml_bytes_exit_2(name: str, data: st.DataObject, avgen_home: Path) -> None:
    """Bytes no TOML parser accepts (invalid UTF-8, NUL, a bare control character) anywhere in a recipe."""
    text = (REPO / "recipes" / name).read_bytes()
    at = data.draw(st.integers(0, len(text)))
    bad = data.draw(st.sampled_from([b"\xff", b"\xc3(", b"\x00", b"\x01", b"\x7f", b"\xed\xa0\x80"]))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(text[:at] + bad + text[at:])
        line = check_rejected(path, Path(tmp) / "runs", context=f"{name}: {bad!r} at byte {at}")
    assert "invalid TOML" in line or "not a UTF-8 text file" in line


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=300))
def test_random_bytes_exit_2(blob: bytes, avgen_home: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "random.toml"
        path.write_bytes(blob)
        check_rejected(path, Path(tmp) / "runs", context=repr(blob))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(SHIPPED)), data=st.data())
def test_truncated_recipe_loads_or_exits_2(name: str, data: st.DataObject, avgen_home: Path) -> None:
    """A recipe cut anywhere is either a shorter valid recipe or rejected in one line."""
    text = (REPO / "recipes" / name).read_bytes()
    at = data.draw(st.integers(0, len(text) - 1))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(text[:at])
        try:
            load_recipes(path)
        except RecipeError:
            check_rejected(path, Path(tmp) / "runs", context=f"{name} cut at byte {at}")


@pytest.mark.parametrize("override, expected", [
    ("train.batch_size=1000000000000", "train.batch_size"),
    ("train.epochs=-3", "train.epochs"),
    ("data.sample_rate=0", "data.sample_rate"),
    ("data.sample_rate=100000000", "data.sample_rate"),
    ("data.clip_seconds=1e-9", "data.clip_seconds"),
    ("data.seed=-1", "data.seed"),
    ("data.offset=1e12", "data.offset"),
    ("loss.0.weight=1e12", "loss.0.weight"),
    ("train.weight_decay=inf", "train.weight_decay"),
    ("train.lr=nan", "train.lr"),
    ("train.grad_clip=1e300", "train.grad_clip"),
    ("train.early_stopping=9999999999", "train.early_stopping"),
])
def test_absurd_values_are_rejected_at_validation(tmp_path: Path, avgen_home: Path, override: str,
                                                  expected: str) -> None:
    line = check_rejected(REPO / "recipes" / "pocan_ghd.toml", tmp_path / "runs", "--set", override, context=override)
    assert expected in line


@pytest.mark.parametrize("section", ["encoder", "representation", "loss"])
def test_a_generator_without_its_inputs_is_rejected_at_validation(tmp_path: Path, avgen_home: Path,
                                                                  section: str) -> None:
    raw = copy(SHIPPED["pocan_ghd.toml"])
    del raw[section]
    path = tmp_path / "r.toml"
    path.write_text(dump(raw))
    line = check_rejected(path, tmp_path / "runs", context=section)
    assert "[generator] needs" in line and section in line


def test_a_line_break_inside_a_key_stays_on_one_line(tmp_path: Path, avgen_home: Path) -> None:
    raw = copy(SHIPPED["quickstart.toml"])
    raw["train"]["ep\nochs\u2028"] = 3
    path = tmp_path / "r.toml"
    path.write_text(dump(raw))
    line = check_rejected(path, tmp_path / "runs", context="newline key")
    assert "ep\\nochs\\u2028" in line


def test_component_errors_come_before_the_run_directory(tmp_path: Path, avgen_home: Path) -> None:
    """A dataset whose Params validate but whose settings conflict fails before <out>/<name> exists."""
    recipe = tmp_path / "r.toml"
    recipe.write_text('[data]\nname = "folder"\nroot = "videos"\nval_fraction = 0.6\ntest_fraction = 0.5\n')
    line = assert_one_line_exit_2(invoke("run", str(recipe), "--out", str(tmp_path / "runs")), "fractions")
    assert "val_fraction + test_fraction" in line
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- a missing data folder: the run dir stays usable

TONES = """
[run]
name = "same"

[data]
name = "tones"
classes = 2
clips_per_class = 4
sample_rate = 8000

[encoder]
name = "mean_color"
fps = 4
input_size = 8

[representation]
name = "stft"
sample_rate = 8000
n_fft = 256
hop_length = 64
n_iter = 2
"""


def test_missing_data_folder_then_a_valid_run_in_the_same_directory(tmp_path: Path, avgen_home: Path,
                                                                    example_plugin: None) -> None:
    """In-process: a missing dataset root is one line and exit 2; the run directory it leaves has no
    finished stage, and a later valid recipe with the same name runs in it (no --fresh needed)."""
    missing = tmp_path / "nowhere"
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[run]\nname = "same"\n\n[data]\nname = "greatest_hits"\nroot = {toml_string(str(missing))}\n')
    out = tmp_path / "runs"
    line = assert_error_line(invoke("run", str(bad), "--out", str(out)), "missing root")
    assert str(missing) in line and "does not exist" in line
    ledger = json.loads((out / "same" / "stages.json").read_text())
    assert not [s for s, v in ledger.get("stages", {}).items() if v.get("status") == "done"]

    good = tmp_path / "good.toml"
    good.write_text(TONES)
    result = invoke("run", str(good), "--out", str(out))
    assert result.exit_code == 0, result.stderr[-2000:]
    stages = json.loads((out / "same" / "stages.json").read_text())["stages"]
    assert all(stages[s]["status"] == "done" for s in ("prepare", "featurize", "report"))
    assert "name = \"tones\"" in (out / "same" / "recipe.toml").read_text()


# ---------------------------------------------------------------- the real CLI, in a subprocess


def test_subprocess_invalid_bytes_and_unicode_key(tmp_path: Path, avgen_home: Path) -> None:
    path = tmp_path / "bytes.toml"
    path.write_bytes((REPO / "recipes" / "quickstart.toml").read_bytes().replace(b"[train]", b"[tr\xffain]"))
    proc = run_avgen("run", str(path), "--out", str(tmp_path / "runs"))
    assert proc.returncode == 2 and error_lines(proc) == [f"error: {path}: not a UTF-8 text file"]

    raw = copy(SHIPPED["can_ghd.toml"])
    raw["generator"]["h\u00efdd\u00e9n\nsize"] = 7
    path = tmp_path / "key.toml"
    path.write_text(dump(raw), encoding="utf-8")
    proc = run_avgen("run", str(path), "--out", str(tmp_path / "runs"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = error_lines(proc)
    assert len(lines) == 1 and "h\u00efdd\u00e9n\\nsize" in lines[0] and "unknown key" in lines[0], proc.stderr
    assert not (tmp_path / "runs").exists()


def test_subprocess_missing_data_folder(tmp_path: Path, avgen_home: Path) -> None:
    proc = run_avgen("run", str(REPO / "recipes" / "owens_vig.toml"), "--out", str(tmp_path / "runs"),
                     "--set", f"data.root={toml_string(str(tmp_path / 'no_vig'))}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in error_lines(proc) if line.startswith("error:")]
    assert len(errors) == 1 and str(tmp_path / "no_vig") in errors[0] and errors[0] == error_lines(proc)[-1]
    assert not (tmp_path / "runs" / "owens_vig" / "stages.json").read_text().count('"done"')
