"""Recipes: validation by each component's Params, --set overrides, one-line errors through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from avgen._core.errors import RecipeError
from avgen._core.recipefiles import apply_override, load_recipe, parse_value
from conftest import avgen_in_process, error_lines, run_avgen
from test_generate import wide_consoles

GOOD = """
[run]
name = "t"
seed = 3

[data]
name = "tones"
classes = 2
clips_per_class = 5

[encoder]
name = "mean_color"

[representation]
name = "mel"
n_mels = 16

[[metric]]
name = "mean_energy"
"""


def write(tmp_path: Path, text: str, name: str = "r.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_recipe_validates_each_section_with_its_params(tmp_path: Path, example_plugin: None) -> None:
    recipe = load_recipe(write(tmp_path, GOOD))
    assert recipe.data.params["classes"] == 2 and recipe.data.params["sample_rate"] == 22050  # default filled
    assert recipe.representation.params["n_mels"] == 16
    assert recipe.run.seed == 3 and recipe.train.batch_size == 40  # paper default


def test_set_overrides_coerce_types(tmp_path: Path, example_plugin: None) -> None:
    recipe = load_recipe(write(tmp_path, GOOD), ["representation.n_mels=24", "train.lr=0.01",
                                                 "metric.mean_energy.floor_db=-80", "run.name=other"])
    assert recipe.representation.params["n_mels"] == 24
    assert recipe.train.lr == 0.01 and recipe.run.name == "other"
    assert recipe.metric[0].params["floor_db"] == -80.0
    recipe = load_recipe(write(tmp_path, GOOD), ["metric.0.floor_db=-70", "train.amp=true"])
    assert recipe.metric[0].params["floor_db"] == -70.0 and recipe.train.amp is True


def test_an_error_only_a_set_brings_is_named_as_the_sets(tmp_path: Path, example_plugin: None) -> None:
    """A valid file with a misspelt --set: the --set is to blame, not the file; a broken file stays the file's."""
    from avgen._core.recipefiles import load_recipes

    path = write(tmp_path, GOOD)
    with pytest.raises(RecipeError) as caught:
        load_recipes(path, ["train.lr=0.01", "train.epocs=5"])
    assert str(caught.value) == f"--set 'train.lr=0.01' 'train.epocs=5' on {path}: train.epocs: unknown key", caught.value
    broken = tmp_path / "broken.toml"
    broken.write_text(GOOD.replace("seed = 3", "seed = 3\nspeed = 3"))
    with pytest.raises(RecipeError, match=f"^{broken}"):
        load_recipes(broken, ["train.lr=0.01"])


def test_parse_value() -> None:
    assert parse_value("256") == 256 and parse_value("0.5") == 0.5 and parse_value("true") is True
    assert parse_value("[1, 5, 10]") == [1, 5, 10] and parse_value("hello") == "hello"
    assert parse_value('"quoted"') == "quoted"


def test_override_errors() -> None:
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        apply_override({}, "no_equals")
    with pytest.raises(RecipeError, match="entries: a"):
        apply_override({"loss": [{"name": "a"}]}, "loss.b.weight=2")


@pytest.mark.parametrize(
    "text, args, expected",
    [
        (GOOD.replace('name = "mel"', 'name = "mell"'), [], ["r.toml:", "representation", "'mel'"]),
        (GOOD.replace("n_mels = 16", "n_mels = 16\nn_melz = 3"), [], ["r.toml:17", "n_melz", "unknown key", "takes:"]),
        (GOOD.replace("n_mels = 16", 'n_mels = "many"'), [], ["r.toml:16", "n_mels", "integer"]),
        (GOOD, ["--set", "train.epochs=-1"], ["train.epochs", "greater than or equal"]),
        (GOOD + "\n[bogus]\nx = 1\n", [], ["unknown section [bogus]", "sections are"]),
        (GOOD.replace("[data]", "[dataz]"), [], ["unknown section [dataz]"]),
        ("[run\nname=", [], ["invalid TOML"]),
    ],
)
def test_bad_recipes_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], example_plugin: None,
                                          text: str, args: list[str], expected: list[str]) -> None:
    """The CLI entry point in this process (a subprocess per case cost 2-3 s of start-up each; the real
    `python -m avgen` path is checked by test_missing_file_and_debug_traceback and test_reliability_recipes)."""
    path = write(tmp_path, text)
    code, _, lines = avgen_in_process(capsys, "run", str(path), "--out", str(tmp_path / "runs"), *args)
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    for piece in expected:
        assert piece in lines[0], lines[0]
    assert not (tmp_path / "runs").exists()  # nothing half-written


def test_missing_file_and_debug_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The real `python -m avgen` in a subprocess: a user error is one line and exit status 2; --debug adds the
    traceback (through the entry point in this process)."""
    proc = run_avgen("run", str(tmp_path / "nope.toml"))
    assert proc.returncode == 2 and error_lines(proc) == [f"error: {tmp_path / 'nope.toml'}: recipe file not found"]
    code, _, lines = avgen_in_process(capsys, "--debug", "run", str(tmp_path / "nope.toml"))
    assert code == 2 and "Traceback" in "\n".join(lines), lines


def test_variants_expand_into_one_recipe_each(tmp_path: Path, example_plugin: None) -> None:
    from avgen._core.recipefiles import load_recipes
    text = GOOD + '\n[[variant]]\nname = "small"\nrepresentation = { name = "mel", n_mels = 8 }\n' \
                  '\n[[variant]]\nname = "base"\n'
    small, base = load_recipes(write(tmp_path, text), ["train.epochs=3", "train.lr=0.5",
                                                       "variant.small.train.epochs=7"])
    assert (small.run.group, small.run.name, base.run.name) == ("t", "small", "base")
    assert small.representation.params["n_mels"] == 8 and base.representation.params["n_mels"] == 16
    assert small.train.epochs == 7 and base.train.epochs == 3
    assert small.train.lr == 0.5  # merged into the base's [train], not replacing it
    with pytest.raises(RecipeError, match="unique name"):
        load_recipes(write(tmp_path, GOOD + '\n[[variant]]\nname = "a"\n[[variant]]\nname = "a"\n'))


def test_variant_runs_share_a_group_folder_and_end_with_a_comparison(tmp_path: Path, avgen_home: Path,
                                                                     example_plugin: None,
                                                                     capsys: pytest.CaptureFixture[str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    text = GOOD + '\n[[variant]]\nname = "small"\nrepresentation = { name = "mel", n_mels = 8 }\n' \
                  '\n[[variant]]\nname = "base"\n'
    wide_consoles(monkeypatch)
    code, out, lines = avgen_in_process(capsys, "run", str(write(tmp_path, text)), "--out", str(tmp_path / "runs"))
    assert code == 0, lines[-20:]
    for name in ("small", "base"):
        assert (tmp_path / "runs" / "t" / name / "metrics.json").is_file()
    assert "mean_energy" in out and "small" in out  # the comparison table
