"""A third-party plugin's mistakes, as a new author makes them from the docs (docs/plugins.md, section 8): each is one
line naming the plugin and what to fix, exit 2, before any data is read. The plugin is a real package on a temporary
site folder (a dist-info with its entry point, on sys.path), and the CLI runs in this process
(conftest.avgen_in_process) after the plugins are reloaded; the plugins are reloaded without it afterwards."""

from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch

import avgen
from avgen._core.build import BANK_ROWS
from avgen._core.plugins import reset
from avgen._core.recipefiles import load_recipe
from avgen._core.retrieval import checked_search
from conftest import TINY_RECIPE, avgen_in_process

pytestmark = pytest.mark.usefixtures("one_thread")

MODULE = "avgen_gru"  # the plugin's module; its distribution is avgen-gru 0.1.0, its entry point 'gru'

# An index as the plugin's author writes it; each mistake below swaps one part.
INDEX_PLUGIN = '''
import torch
from pydantic import BaseModel, ConfigDict

import avgen


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CosineTopK(avgen.Index):
    def build(self, bank):
        self.bank = torch.nn.functional.normalize(bank, dim=1)
        return self

    def search(self, query, k):
        cosines = torch.nn.functional.normalize(query, dim=1) @ self.bank.T
        scores, indices = cosines.topk(min(k, self.bank.shape[0]), dim=1)
        return scores, indices


@avgen.hookimpl
def register_indexes(register):
    register("cosine_topk", lambda params, context: CosineTopK(), params=Params)
'''

INDEX_MISTAKES = {  # the mistake -> (the edit to INDEX_PLUGIN, a pattern the one error line matches)
    "(indices, scores) swapped": (
        ("return scores, indices", "return indices, scores"),
        r"^plugin 'gru': index 'cosine_topk': search gave indices float32 \[2, 10\]; expected integer indices \[N, k\] "
        r"into the bank \(search returns \(scores, indices\), in that order\)$"),
    "indices as floats": (
        ("return scores, indices", "return scores, indices.float()"),
        r"^plugin 'gru': index 'cosine_topk': search gave indices float32 \[2, 10\]; expected integer indices \[N, k\] "
        r"into the bank$"),
    "indices off by one": (
        ("return scores, indices", "return scores, indices + 1"),
        rf"^plugin 'gru': index 'cosine_topk': search gave indices from 1 to {BANK_ROWS} for a bank of {BANK_ROWS} rows; "
        rf"expected indices in \[-1, {BANK_ROWS}\)"),
    "one row per query, not k": (
        ("return scores, indices", "return scores[:, 0], indices[:, 0]"),
        r"^plugin 'gru': index 'cosine_topk': search gave scores float32 \[2\] and indices int64 \[2\] for 2 queries "
        r"and k = 10; expected both \[N, k'\] = \[2, k'\] with 1 <= k' <= 10$"),
    "more than k": (
        ("topk(min(k, self.bank.shape[0])", "topk(min(k + 1, self.bank.shape[0])"),
        r"search gave scores float32 \[2, 11\] and indices int64 \[2, 11\] for 2 queries and k = 10;"),
    "the indices alone": (
        ("return scores, indices", "return indices"),
        r"^plugin 'gru': index 'cosine_topk': search returned Tensor; expected a tuple \(scores, indices\) of two "
        r"tensors \[N, k\]$"),
    "build without return": (
        ("        return self\n", ""),
        r"^plugin 'gru': index 'cosine_topk': build\(bank\) returned None; expected the index itself"),
    "search raises": (
        ("cosines = torch.nn.functional.normalize(query, dim=1) @ self.bank.T",
         "cosines = torch.nn.functional.normalize(query, dim=1) @ self.bank"),
        rf"^plugin 'gru': index 'cosine_topk' failed on a bank of {BANK_ROWS} random rows before the run: RuntimeError: "),
}


def edited(source: str, old: str, new: str) -> str:
    assert source.count(old) == 1, old
    return source.replace(old, new)


@pytest.fixture
def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, avgen_home: Path) -> Iterator[Callable[[str], None]]:
    """``install(source)``: the plugin package avgen-gru 0.1.0 (module avgen_gru, entry point 'gru') in a site folder
    on sys.path, the plugins reloaded with it; afterwards reloaded without it."""
    site = tmp_path / "site"

    def put(source: str) -> None:
        site.mkdir()
        info = site / "avgen_gru-0.1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: avgen-gru\nVersion: 0.1.0\n")
        (info / "entry_points.txt").write_text(f"[avgen]\ngru = {MODULE}\n")
        (site / f"{MODULE}.py").write_text(source)
        monkeypatch.syspath_prepend(str(site))
        importlib.invalidate_caches()
        sys.modules.pop(MODULE, None)
        reset()

    yield put
    monkeypatch.undo()
    sys.modules.pop(MODULE, None)
    reset()


def run_recipe(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str = "",
               recipe_text: str = TINY_RECIPE) -> tuple[int, list[str]]:
    recipe = tmp_path / "r.toml"
    recipe.write_text(recipe_text.format(root=str(tmp_path / "data")) + extra)
    code, _, lines = avgen_in_process(capsys, "run", str(recipe), "--out", str(tmp_path / "runs"))
    return code, lines


def assert_nothing_was_read(tmp_path: Path, home: Path) -> None:
    """No run directory, no data made (prepare) and no cache file (featurize)."""
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()
    assert [p for p in home.rglob("*") if p.is_file() and "cache" in p.parts] == []


# ---------------------------------------------------------------- an index's mistakes, in the preflight


@pytest.mark.parametrize("mistake", list(INDEX_MISTAKES))
def test_an_index_mistake_is_one_line_before_any_data_is_read(mistake: str, install, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str], avgen_home: Path,
                                                               example_plugin: None) -> None:
    (old, new), pattern = INDEX_MISTAKES[mistake]
    install(edited(INDEX_PLUGIN, old, new))
    code, lines = run_recipe(tmp_path, capsys, '\n[index]\nname = "cosine_topk"\n')
    assert code == 2 and len(lines) == 1, lines
    assert re.search(pattern, lines[0].removeprefix("error: ")), lines[0]
    assert "internal error" not in lines[0]
    assert_nothing_was_read(tmp_path, avgen_home)


def test_the_index_done_right_passes_the_rehearsal_and_answers_as_exact(install, tmp_path: Path) -> None:
    """The preflight's rehearsed search (avgen._core.build.rehearse_index) accepts a correct index, the default exact
    one too; checked_search passes their answers through unchanged."""
    from avgen._core.build import rehearse_index

    install(INDEX_PLUGIN)
    recipe = tmp_path / "r.toml"
    for extra in ("", '\n[index]\nname = "cosine_topk"\n'):
        recipe.write_text(TINY_RECIPE.format(root=str(tmp_path / "data")) + extra)
        rehearse_index(load_recipe(recipe), 5)
    bank, query = torch.randn(20, 5, generator=torch.Generator().manual_seed(0)), torch.randn(3, 5)
    ours = avgen.create("index", "cosine_topk").build(bank).search(query, 4)
    exact = avgen.create("index", "exact").build(bank).search(query, 4)
    assert torch.equal(ours[1], exact[1])
    checked = checked_search(ours, 3, 4, "x", rows=20)
    assert checked[0] is ours[0] and checked[1] is ours[1]


def test_checked_search_allows_empty_slots_and_fewer_than_k() -> None:
    scores = torch.tensor([[0.9, -float("inf")], [0.5, 0.4]])
    indices = torch.tensor([[3, -1], [0, 2]])
    assert checked_search((scores, indices), 2, 5, "who", rows=4)[1] is indices
    assert checked_search([scores.double(), indices.int()], 2, 2, "who")[0].dtype == torch.float64
    for result, expected in (
        ((scores, indices.bool()), "search gave indices bool [2, 2]; expected integer indices"),
        ((indices, indices), "search gave scores int64 [2, 2]; expected float scores [N, k]"),
        ((scores, indices, indices), "search returned a tuple of 3; expected a tuple (scores, indices)"),
        ((scores[:1], indices[:1]), "for 2 queries and k = 5; expected both [N, k'] = [2, k']"),
        ((scores, indices - 1), "search gave indices from -2 to 2 for a bank of 4 rows; expected indices in [-1, 4)"),
    ):
        with pytest.raises(avgen.AvgenError, match=re.escape(expected)) as caught:
            checked_search(result, 2, 5, "plugin 'p': index 'i'", rows=4)
        assert str(caught.value).startswith("plugin 'p': index 'i': ") and "\n" not in str(caught.value)


# ---------------------------------------------------------------- a plugin that fails to load


def test_a_model_folder_of_a_broken_plugin_says_why_it_failed_to_load(install, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """`avgen generate --model` names the plugin's import error (as `--run` does), not 'pip install' a package
    that is installed."""
    from avgen_share.folder import write_sums

    install("import no_such_module_xyz\n" + INDEX_PLUGIN)
    assert [p.failure for p in avgen.broken_plugins()] == [
        "plugin 'gru' (avgen-gru 0.1.0) failed to load: ModuleNotFoundError: No module named 'no_such_module_xyz'"]
    model = tmp_path / "model"
    model.mkdir()
    components = {"index": {"name": "cosine_topk", "plugin": "gru", "distribution": "avgen_gru", "version": "0.1.0"}}
    (model / "config.json").write_text(json.dumps({"format": "avgen-model/1", "components": components}))
    for name in ("model.safetensors", "README.md"):
        (model / name).write_bytes(b"")  # the components are checked before the weights are read
    write_sums(model, ["config.json", "model.safetensors", "README.md"])
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    code, _, lines = avgen_in_process(capsys, "generate", str(video), "--model", str(model), "-o", str(tmp_path / "o.wav"))
    assert code == 2 and len(lines) == 1, lines
    assert lines[0] == (f"error: --model {model}: plugin 'gru' (avgen-gru 0.1.0) failed to load: ModuleNotFoundError: "
                        "No module named 'no_such_module_xyz' (its index 'cosine_topk' comes from the plugin 'gru' of "
                        "avgen_gru 0.1.0)")
    assert "pip install" not in lines[0]


def test_an_unknown_name_puts_the_broken_plugin_first_and_only_near_guesses_after(
        install, tmp_path: Path, capsys: pytest.CaptureFixture[str], avgen_home: Path, example_plugin: None) -> None:
    install("import no_such_module_xyz\n" + INDEX_PLUGIN)
    failure = "plugin 'gru' (avgen-gru 0.1.0) failed to load: ModuleNotFoundError: No module named 'no_such_module_xyz'"
    code, _, lines = avgen_in_process(capsys, "show", "cosine_topk")
    assert code == 2 and lines == [f"error: {failure}; no component named 'cosine_topk' (that plugin may have "
                                   "registered it; see `avgen list`)"]  # no loose guess such as 'onset'
    code, _, lines = avgen_in_process(capsys, "show", "flow_match")
    assert code == 2 and lines == [f"error: {failure}; no component named 'flow_match' (that plugin may have registered "
                                   "it; did you mean 'flow_matching'? see `avgen list`)"]
    code, lines = run_recipe(tmp_path, capsys, '\n[index]\nname = "cosine_topk"\n')
    assert code == 2 and len(lines) == 1, lines
    assert re.fullmatch(rf"error: {re.escape(str(tmp_path / 'r.toml'))}:\d+: {re.escape(failure)}; unknown index "
                        r"'cosine_topk' \(that plugin may have registered it; see `avgen list index`\)", lines[0]), lines
    assert_nothing_was_read(tmp_path, avgen_home)


def test_without_a_broken_plugin_the_guesses_read_as_before(avgen_home: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, _, lines = avgen_in_process(capsys, "show", "flow_match")
    assert code == 2 and lines == ["error: no component named 'flow_match'; did you mean 'flow_matching', "
                                   "'flow_matching_mse'? (see `avgen list`)"]
    with pytest.raises(avgen.UnknownComponentError, match=r"^unknown generator 'flow_match'; did you mean "
                                                          r"'flow_matching'\? \(see `avgen list generator`\)$"):
        avgen.get_component("generator", "flow_match")


def test_a_misspelt_hook_names_the_closest_one(install, capsys: pytest.CaptureFixture[str]) -> None:
    install(edited(INDEX_PLUGIN, "def register_indexes(", "def register_index("))
    code, out, lines = avgen_in_process(capsys, "list", "--json")
    assert code == 0, lines
    broken = {p["name"]: p["error"] for p in json.loads(out)["broken_plugins"]}
    assert broken["gru"] == "PluginValidationError: unknown hook 'register_index'; did you mean 'register_indexes'?"
    assert [p.name for p in avgen.broken_plugins()] == ["gru"]


def test_a_hook_like_none_of_avgens_lists_them(install) -> None:
    install(edited(INDEX_PLUGIN, "def register_indexes(", "def make_indexes("))
    (error,) = [p.error for p in avgen.broken_plugins()]
    assert error.startswith("PluginValidationError: unknown hook 'make_indexes'; avgen's hooks are ")
    assert "register_indexes" in error and "<module" not in error


# ---------------------------------------------------------------- what list and show print


def test_list_help_names_every_kind(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = avgen_in_process(capsys, "list", "--help")
    assert code == 0
    assert f"KIND ({', '.join(avgen.KINDS)})" in " ".join(out.split())


def test_show_prints_a_literal_params_values(avgen_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, lines = avgen_in_process(capsys, "show", "exact", "--json")
    assert code == 0, lines
    types = {row["field"]: row["type"] for row in json.loads(out)["params"]}
    assert types == {"precision": "'fp32' | 'bf16'", "rerank": "int | None", "chunk_size": "int"}
    code, out, _ = avgen_in_process(capsys, "show", "exact")
    assert code == 0 and "'fp32' | 'bf16'" in out


def test_a_run_names_the_pip_install_of_a_component_that_is_gone(tiny_run: Path, tmp_path: Path, monkeypatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A run records where each of its components came from (environment.json); generate --run on a machine
    without that plugin says which pip install brings it back."""
    from avgen._core.plugins import get_registry

    recorded = json.loads((tiny_run / "environment.json").read_text())["components"]
    assert {"kind": "generator", "name": "can_lstm", "plugin": "lstm", "distribution": "avgen",
            "version": avgen.__version__} in recorded
    assert {r["kind"] for r in recorded} >= {"dataset", "encoder", "representation", "generator", "loss"}
    monkeypatch.delitem(get_registry()._components["generator"], "can_lstm")  # as where that plugin is not installed
    monkeypatch.setenv("AVGEN_HOME", str(tiny_run.parents[1] / "home"))
    video = sorted((tiny_run.parents[1] / "data").glob("*_denoised.mp4"))[0]
    code, _, lines = avgen_in_process(capsys, "generate", str(video), "--run", str(tiny_run), "-o", str(tmp_path / "out"))
    assert code == 2 and len(lines) == 1, lines
    assert "unknown generator 'can_lstm'" in lines[0], lines
    assert f"plugin 'lstm' of the distribution avgen {avgen.__version__}: pip install 'avgen=={avgen.__version__}'" in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_bad_set_value_in_generate_is_named_as_the_set_not_the_recipe(tiny_run: Path, tmp_path: Path, monkeypatch,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AVGEN_HOME", str(tiny_run.parents[1] / "home"))
    video = sorted((tiny_run.parents[1] / "data").glob("*_denoised.mp4"))[0]
    code, _, lines = avgen_in_process(capsys, "generate", str(video), "--run", str(tiny_run), "-o", str(tmp_path / "out"),
                                      "--exemplar", "--set", "index.name=exact", "--set", "index.precision=bogus")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: --set ") and "index.precision" in lines[0] and "recipe.toml" not in lines[0], lines
