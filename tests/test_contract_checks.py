"""The plugin contract checks itself before any work: a third-party plugin's mistake is one line naming the plugin
and the component, exit 2, before the data is made or featurized (avgen._core.build.rehearse, check_contract, register)."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from pydantic import BaseModel

import avgen
from avgen._core.components import check_contract
from avgen._core.errors import AvgenError
from avgen._core.registry import Registry
from avgen._core.plugins import reset
from conftest import TINY_RECIPE, avgen_in_process, error_lines, run_avgen
from test_plugins import fake_distribution, with_path

# A plugin as a new user writes it: a GRU generator and a spectral loss. Each test swaps one part for a mistake.
GRU_PLUGIN = '''
import torch
from pydantic import BaseModel, ConfigDict

import avgen


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GRURegressor(avgen.Generator):
    def __init__(self, shape):
        super().__init__()
        self.steps = shape.steps
        self.gru = torch.nn.GRU(shape.feature_dim, 8, batch_first=True)
        self.out = torch.nn.Linear(8, shape.rep_dim)

    def forward(self, features):
        hidden, _ = self.gru(avgen.replicate_to_steps(features, self.steps))
        return {"rep": self.out(hidden).transpose(1, 2)}  # [B, D, F]


class SpectralL1(avgen.Loss):
    needs = frozenset({"rep"})

    def __call__(self, outputs, batch):
        return (outputs["rep"] - batch["rep"]).abs().mean()


def make_gru(params, context):
    return GRURegressor(context.require_shape("gru_regressor"))


@avgen.hookimpl
def register_generators(register):
    register("gru_regressor", make_gru, params=Params)


@avgen.hookimpl
def register_losses(register):
    register("spectral_l1", lambda params, context: SpectralL1(), params=Params)
'''

GRU_RECIPE = TINY_RECIPE.replace('name = "can_lstm"\nhidden = 16', 'name = "gru_regressor"').replace(
    '[[loss]]\nname = "class_nll"\n\n[[loss]]\nname = "spec_smooth_l1"\nweight = 50.0', '[[loss]]\nname = "spectral_l1"')
assert 'name = "gru_regressor"' in GRU_RECIPE and "class_nll" not in GRU_RECIPE

MISTAKES = {  # what the plugin author got wrong -> (the edits to GRU_PLUGIN, a pattern the one error line matches)
    "a factory without context": (
        [("def make_gru(params, context):\n    return GRURegressor(context.require_shape",
          "def make_gru(params):\n    return GRURegressor(params.require_shape")],
        r"generator 'gru_regressor' from plugin 'gru_plugin': its factory make_gru\(params\) must take \(params, context\)"),
    "rep as [B, F, D]": (
        [('return {"rep": self.out(hidden).transpose(1, 2)}', 'return {"rep": self.out(hidden)}')],
        r"plugin 'gru_plugin': generator 'gru_regressor': training_outputs gave rep \[2, (\d+), (\d+)\] for a batch of 2; "
        r"expected \[B, D, F\] = \[2, \2, \1\]"),
    "a loss that needs probs": (
        [('needs = frozenset({"rep"})', 'needs = frozenset({"rep", "probs"})')],
        r"loss 'spectral_l1' \(plugin 'gru_plugin'\) needs probs from the generator, but generator 'gru_regressor' "
        r"\(plugin 'gru_plugin'\) provides rep;"),
    "a loss reading an output it does not declare": (
        [('return (outputs["rep"] - batch["rep"]).abs().mean()', 'return outputs["probs"].mean()')],
        r"plugin 'gru_plugin': loss 'spectral_l1' failed on a batch of 2 random clips before the run: KeyError: 'probs' "
        r"\(declare the generator outputs it reads, e.g. needs = frozenset\(\{'probs'\}\)"),
    "a loss per clip": (
        [('.abs().mean()', '.abs().mean(dim=(1, 2))')],
        r"plugin 'gru_plugin': loss 'spectral_l1': gave \[2\] for a batch of 2; expected a scalar tensor"),
    "a generator without forward": (
        [("    def forward(self, features):", "    def fwd(self, features):")],
        r"plugin 'gru_plugin': generator 'gru_regressor' does not follow the contract: GRURegressor does not implement "
        r"forward"),
    "a generator whose weights the loss never reaches": (
        [('return {"rep": self.out(hidden).transpose(1, 2)}', 'return {"rep": self.out(hidden).transpose(1, 2).detach()}')],
        r"no gradient reaches the weights of generator 'gru_regressor' \(plugin 'gru_plugin'\) from the losses spectral_l1"),
    "a generator that declares an output it does not give": (
        [("class GRURegressor(avgen.Generator):\n", 'class GRURegressor(avgen.Generator):\n    provides = frozenset({"rep", "probs"})\n'),
         ('needs = frozenset({"rep"})', 'needs = frozenset({"rep", "probs"})')],
        r"plugin 'gru_plugin': generator 'gru_regressor': training_outputs gave rep, without probs, which it declares"),
}


def edited(edits: list[tuple[str, str]]) -> str:
    source = GRU_PLUGIN
    for old, new in edits:
        assert source.count(old) == 1, old
        source = source.replace(old, new)
    return source


def install(site: Path, source: str) -> None:
    fake_distribution(site, "gru-plugin", "gru_plugin", source)


def run_recipe(tmp_path: Path, recipe_text: str, site: Path | None = None):
    recipe = tmp_path / "gru.toml"
    recipe.write_text(recipe_text.format(root=str(tmp_path / "data")))
    env = {**(with_path(site) if site else {}), "AVGEN_HOME": str(tmp_path / "home")}
    return run_avgen("run", str(recipe), "--out", str(tmp_path / "runs"), env=env)


class InProcess:
    """The real CLI entry point in this process, with the plugin on sys.path; the plugins are loaded afresh for every
    command (and once more, without the plugin, when the test ends)."""

    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp_path, self.capsys, self.monkeypatch = tmp_path, capsys, monkeypatch
        self.site = tmp_path / "site"
        monkeypatch.setenv("AVGEN_HOME", str(tmp_path / "home"))
        monkeypatch.syspath_prepend(str(self.site))

    def install(self, source: str) -> None:
        install(self.site, source)

    def cli(self, *args: str) -> tuple[int, list[str]]:
        """(exit code, stderr lines) of `avgen ARGS`."""
        importlib.invalidate_caches()
        sys.modules.pop("gru_plugin", None)
        reset()
        code, _, lines = avgen_in_process(self.capsys, *args)
        return code, lines

    def run(self, recipe_text: str, plugin_source: str | None = None) -> tuple[int, list[str]]:
        """`avgen run` of the recipe, with the plugin installed first when a source is given."""
        if plugin_source is not None:
            self.install(plugin_source)
        recipe = self.tmp_path / "gru.toml"
        recipe.write_text(recipe_text.format(root=str(self.tmp_path / "data")))
        return self.cli("run", str(recipe), "--out", str(self.tmp_path / "runs"))


@pytest.fixture
def in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    yield InProcess(tmp_path, capsys, monkeypatch)
    monkeypatch.undo()
    sys.modules.pop("gru_plugin", None)
    importlib.invalidate_caches()
    reset()


def assert_nothing_was_read(tmp_path: Path) -> None:
    """No run directory, no data made (prepare) and no cache file (featurize)."""
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()
    assert [p for p in (tmp_path / "home").rglob("*") if p.is_file() and "cache" in p.parts] == []


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_a_plugin_mistake_is_one_line_naming_it_before_any_data_is_read(mistake: str, tmp_path: Path,
                                                                       example_plugin: None, in_process: InProcess) -> None:
    """In this process (each run loads the plugins afresh); the plugin trial below runs the CLI as a subprocess."""
    edits, pattern = MISTAKES[mistake]
    code, lines = in_process.run(GRU_RECIPE, edited(edits))
    assert code == 2 and len(lines) == 1, lines
    assert re.search(pattern, lines[0]), lines[0]
    assert "internal error" not in lines[0] and "Traceback" not in lines[0]
    assert_nothing_was_read(tmp_path)


def test_a_wrong_factory_refuses_that_component_and_keeps_the_plugins_others(tmp_path: Path) -> None:
    """`avgen list` names the plugin and the refused component; the plugin's loss is still there to use."""
    edits, pattern = MISTAKES["a factory without context"]
    install(tmp_path / "site", edited(edits))
    proc = run_avgen("list", "--json", env={**with_path(tmp_path / "site"), "AVGEN_HOME": str(tmp_path / "home")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    listing = json.loads(proc.stdout)
    broken = {p["name"]: p["error"] for p in listing["broken_plugins"]}
    assert re.search("register_generators: TypeError: " + pattern, broken["gru_plugin"]), broken
    mine = {(c["kind"], c["name"]) for c in listing["components"] if c["plugin"] == "gru_plugin"}
    assert mine == {("loss", "spectral_l1")}, mine


def test_the_gru_plugin_done_right_trains_end_to_end(tmp_path: Path, example_plugin: None,
                                                     in_process: InProcess) -> None:
    """... and when the plugin later changes or breaks, generating with the trained run says so in one line."""
    install(tmp_path / "site", GRU_PLUGIN)
    proc = run_recipe(tmp_path, GRU_RECIPE.replace("epochs = 2", "epochs = 1"), tmp_path / "site")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "runs" / "tiny"
    assert json.loads((run_dir / "stages.json").read_text())["stages"]["fit"]["epochs"] == 1
    assert (run_dir / "report.html").is_file()

    video = sorted((tmp_path / "data").glob("*.mp4"))[0]  # below: the CLI in this process, the plugin edited
    for source, pattern in [
        (edited(MISTAKES["rep as [B, F, D]"][0]),  # the plugin now returns [B, F, D]
         r"plugin 'gru_plugin': generator 'gru_regressor': forward gave rep \[2, (\d+), (\d+)\] for a batch of 2; "
         r"expected \[B, D, F\] = \[2, \2, \1\]"),
        ("import no_such_module_xyz\n" + GRU_PLUGIN,  # installed, but it fails to load: no pip install would mend it
         r"plugin 'gru_plugin' \(gru-plugin 0.1\) failed to load: ModuleNotFoundError: No module named "
         r"'no_such_module_xyz'.*unknown generator 'gru_regressor'"),
    ]:
        (tmp_path / "site" / "gru_plugin.py").write_text(source)
        out = tmp_path / "out.wav"
        code, lines = in_process.cli("generate", str(video), "--run", str(run_dir), "-o", str(out))
        assert code == 2 and len(lines) == 1, lines
        assert re.search(pattern, lines[0]) and "pip install" not in lines[0], lines[0]
        assert not out.exists()
    (tmp_path / "site" / "gru_plugin.py").unlink()  # uninstalled: generate, export and a resume name the pip install
    shutil.rmtree(next((tmp_path / "site").glob("gru-plugin-*.dist-info")))
    for args in (["generate", str(video), "--run", str(run_dir), "-o", str(tmp_path / "out.wav")],
                 ["export", str(run_dir), str(tmp_path / "model")],
                 ["run", str(run_dir / "recipe.toml")]):
        code, lines = in_process.cli(*args)
        assert code == 2 and len(lines) == 1, lines
        assert "unknown generator 'gru_regressor'" in lines[0] and lines[0].endswith("pip install 'gru-plugin==0.1'"), lines
    assert not (tmp_path / "model").exists()


def test_a_builtin_pairing_mistake_is_one_line_naming_both_components(tmp_path: Path, example_plugin: None,
                                                                       in_process: InProcess) -> None:
    """class_nll needs a class head; owens_lstm has none (it used to fail at the first training step)."""
    code, lines = in_process.run(TINY_RECIPE.replace('name = "can_lstm"', 'name = "owens_lstm"'))
    assert code == 2 and len(lines) == 1, lines
    assert ("loss 'class_nll' (plugin 'lstm') needs probs from the generator, but generator 'owens_lstm' "
            "(plugin 'lstm') provides rep, residual") in lines[0]
    recipe_lines = (tmp_path / "gru.toml").read_text().splitlines()  # the line that names the loss
    number = next(n for n, line in enumerate(recipe_lines, start=1) if 'name = "class_nll"' in line)
    assert lines[0].startswith(f"error: {tmp_path / 'gru.toml'}:{number}: loss 'class_nll'"), lines[0]
    assert_nothing_was_read(tmp_path)


def test_a_metric_that_needs_generated_sound_in_a_recipe_without_a_generator(tmp_path: Path, example_plugin: None,
                                                                             in_process: InProcess) -> None:
    recipe = TINY_RECIPE.split("[generator]")[0] + '[[metric]]\nname = "soundnet_fd"\n'
    code, lines = in_process.run(recipe)
    assert code == 2 and len(lines) == 1, lines
    assert "metric 'soundnet_fd' (plugin 'soundnet') needs rep from the generator, but the recipe has no [generator]" \
        in lines[0]
    assert_nothing_was_read(tmp_path)


def test_generate_names_the_plugin_that_failed_to_load(tmp_path: Path) -> None:
    """`avgen run` and `avgen show` are covered in test_plugins.py; `avgen generate --detector` likewise."""
    fake_distribution(tmp_path / "site", "gru-plugin", "gru_plugin", "import no_such_module_xyz\n")
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")  # the detector is looked up before any video is read
    proc = run_avgen("generate", str(video), "--run", str(tmp_path / "runs" / "x"), "--detector", "gru_contacts",
                     "-o", str(tmp_path / "out.wav"),
                     env={**with_path(tmp_path / "site"), "AVGEN_HOME": str(tmp_path / "home")})
    lines = error_lines(proc)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert "gru_contacts" in lines[0] and "plugin 'gru_plugin' (gru-plugin 0.1) failed to load" in lines[0]
    assert "no_such_module_xyz" in lines[0]


# ---------------------------------------------------------------- the checks in-process


class NoParams(BaseModel):
    pass


def test_register_refuses_a_factory_that_cannot_take_params_and_context() -> None:
    registry = Registry()
    for factory in (lambda params: None, lambda: None, lambda params, context, extra: None, "not callable"):
        with pytest.raises(TypeError, match="loss 'l1' from plugin 'mine': its factory .* must take \\(params, context\\)"):
            registry.register("loss", "mine", "l1", factory, NoParams)
    for factory in (lambda params, context: None, lambda *args: None, lambda params, context=None, **kw: None, dict):
        Registry().register("loss", "mine", "l1", factory, NoParams)


class HalfLoss(avgen.Loss):
    """Declares what it needs but implements nothing."""

    needs = frozenset({"rep"})


class WrongNeeds(avgen.Loss):
    needs = ["rep"]  # a list: not a frozenset

    def __call__(self, outputs, batch):
        return outputs["rep"].mean()


class Plain(avgen.Generator):
    def forward(self, features):
        return {"rep": features.mean(1, keepdim=True).transpose(1, 2)}


def test_check_contract_refuses_what_a_base_class_marks_abstract_and_bad_declarations() -> None:
    with pytest.raises(AvgenError, match=r"plugin 'mine': loss 'half' does not follow the contract: HalfLoss does not "
                                         r"implement __call__"):
        check_contract("loss", HalfLoss(), "half", "mine")
    with pytest.raises(AvgenError, match=r"plugin 'mine': loss 'wrong' declares needs=\['rep'\]; give a frozenset"):
        check_contract("loss", WrongNeeds(), "wrong", "mine")
    generator = check_contract("generator", Plain(), "plain", "mine")
    assert generator.provides == frozenset({"rep"}) and avgen.Loss.needs == frozenset() == avgen.Metric.needs
    assert generator(torch.ones(2, 3, 4))["rep"].shape == (2, 4, 1)


# A dataset plugin as a new user writes one: their own layout (here a wrapper of synthetic_hits' files, made once for
# the module), each test swapping one part for a mistake a dataset author makes.
DATASET_PLUGIN = '''
import dataclasses

from pydantic import BaseModel, ConfigDict

import avgen


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: str


class CsvHits(avgen.Dataset):
    def __init__(self, p):
        self.inner = avgen.create("dataset", "synthetic_hits", root=p.root, videos=6, classes=3, video_seconds=4.0)
        self.sample_rate, self.clip_seconds = self.inner.sample_rate, self.inner.clip_seconds

    @property
    def class_names(self):
        return self.inner.class_names

    def prepare(self, progress=None):
        self.inner.prepare(progress)

    def clips(self, split):
        return [dataclasses.replace(c, label=c.label) for c in self.inner.clips(split)]

    def load_frames(self, clip, fps, size):
        return self.inner.load_frames(clip, fps, size)

    def load_audio(self, clip):
        return self.inner.load_audio(clip)


@avgen.hookimpl
def register_datasets(register):
    register("csv_hits", lambda params, context: CsvHits(params), params=Params)
'''

DATASET_RECIPE = TINY_RECIPE.replace('name = "synthetic_hits"\nroot = "{root}"\nvideos = 6\nclasses = 3\nvideo_seconds = 4.0',
                                     'name = "csv_hits"\nroot = "{root}"')
assert 'name = "csv_hits"' in DATASET_RECIPE

DATASET_MISTAKES = {  # -> (the edit to DATASET_PLUGIN, a pattern the one error line matches)
    "labels as class names": (("label=c.label)", "label=self.class_names[c.label])"),
                              r"plugin 'gru_plugin': dataset 'csv_hits': clip '[^']+' of the train split has label "
                              r"'\w+'; a label is its class's index in class_names, an int in \[0, 3\) \(3 classes\)"),
    "labels counted from 1": (("label=c.label)", "label=c.label + 1)"),
                              r"dataset 'csv_hits': clip '[^']+' of the \w+ split has label 3; .* \[0, 3\)"),
    "no val split": (("    def clips(self, split):\n", "    def clips(self, split):\n        if split == 'val':\n"
                      "            raise KeyError(split)\n"),
                     r"plugin 'gru_plugin': dataset 'csv_hits' failed on clips\('val'\) \(a dataset gives every split, "
                     r"an empty list where it has none\) before the run: KeyError: 'val'"),
    "read_audio's tuple": (("return self.inner.load_audio(clip)", "return (self.inner.load_audio(clip), self.sample_rate)"),
                           r"plugin 'gru_plugin': dataset 'csv_hits': load_audio\('[^']+'\) gave tuple; expected a float "
                           r"tensor \[T\].*take \[0\]"),
}


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """synthetic_hits' files, written once for the module (each run's prepare finds them there)."""
    root = tmp_path_factory.mktemp("csv_hits") / "data"
    avgen.create("dataset", "synthetic_hits", root=str(root), videos=6, classes=3, video_seconds=4.0).prepare(None)
    return root


@pytest.mark.parametrize("mistake", list(DATASET_MISTAKES))
def test_a_dataset_plugin_mistake_is_one_line_naming_it_before_any_clip_is_featurized(
        mistake: str, tmp_path: Path, dataset_root: Path, in_process: InProcess) -> None:
    (old, new), pattern = DATASET_MISTAKES[mistake]
    assert DATASET_PLUGIN.count(old) == 1, old
    in_process.install(DATASET_PLUGIN.replace(old, new))
    recipe = tmp_path / "csv.toml"
    recipe.write_text(DATASET_RECIPE.format(root=str(dataset_root)))
    code, lines = in_process.cli("run", str(recipe), "--out", str(tmp_path / "runs"))
    # the run's first line and the prepare stage's heading, then the one error line (a dataset's clips are known once
    # it is prepared)
    assert code == 2 and len(lines) == 3 and lines[0].startswith("avgen run ") and "prepare" in lines[1], lines
    assert re.search(pattern, lines[2]), lines[2]
    assert not any("internal error" in line or "Traceback" in line for line in lines)
    assert [p for p in (tmp_path / "home").rglob("*") if p.is_file() and "cache" in p.parts] == []  # nothing featurized


def test_the_dataset_plugin_done_right_passes_the_checks(tmp_path: Path, dataset_root: Path,
                                                         in_process: InProcess) -> None:
    in_process.install(DATASET_PLUGIN)
    recipe = tmp_path / "csv.toml"
    recipe.write_text(DATASET_RECIPE.format(root=str(dataset_root)))
    code, lines = in_process.cli("run", str(recipe), "--out", str(tmp_path / "runs"), "--only", "prepare")
    assert code == 0, lines
    counts = json.loads((tmp_path / "runs" / "tiny" / "dataset.json").read_text())["splits"]
    assert counts["train"] > 0 and set(counts) == {"train", "val", "test"}


def test_a_component_its_plugin_refused_is_named_as_refused_not_as_unknown(in_process: InProcess) -> None:
    edits, pattern = MISTAKES["a factory without context"]
    in_process.install(edited(edits))
    code, lines = in_process.cli("show", "gru_regressor")
    assert code == 2 and len(lines) == 1, lines
    assert re.search(pattern, lines[0]) and "refused a component" in lines[0], lines[0]
    assert "may have registered it" not in lines[0] and "'gru_regressor' is not available until that is fixed" in lines[0], lines[0]
    code, lines = in_process.cli("list", "loss")
    assert code == 0 and not any("broken plugin" in line for line in lines), lines
