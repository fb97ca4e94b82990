"""Reading a result from the report alone: baselines beside the run, the loss balance, the fit line, the
collapse warning (forced by a generator that outputs a constant) and examples spread over classes and videos."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pytest
import torch
from pydantic import BaseModel, ConfigDict

import avgen
from avgen._core.components import Clip
from avgen._core.report import collapse_warnings, pick_examples, prediction_spread
from conftest import EXAMPLE, avgen_in_process, run_avgen

BASELINES = ("chance", "visual_nn", "train_mean", "oracle")

RECIPE = """
[run]
name = "{name}"
seed = 0

[data]
name = "tones"
classes = 4
clips_per_class = 12

[encoder]
name = "mean_color"

[representation]
name = "mel"
n_mels = 40
n_iter = 4

[generator]
name = "{generator}"
{generator_params}

[[loss]]
name = "spec_smooth_l1"
weight = 50.0
{extra_loss}

[train]
epochs = 12
batch_size = 8
lr = 0.01

[eval]
examples = 4

[[metric]]
name = "recall_at_k"

[[metric]]
name = "mean_energy"  # the example plugin's metric does not round: the runner does
"""


@pytest.fixture(scope="module")
def can_run(tmp_path_factory: pytest.TempPathFactory, example_plugin: None) -> Path:
    """The class-conditioned LSTM on the example plugin's tones (4 classes, colour frames), by the CLI entry point
    in this process (its output is in the tests' captured setup output)."""
    from avgen._core.cli import main

    base = tmp_path_factory.mktemp("reading")
    recipe = base / "can.toml"
    recipe.write_text(RECIPE.format(name="can_tones", generator="can_lstm", generator_params="hidden = 32",
                                    extra_loss='[[loss]]\nname = "class_nll"\nweight = 1.0'))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AVGEN_HOME", str(base / "home"))
        try:
            main(["run", str(recipe), "--out", str(base / "runs")])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
    assert code == 0
    return base / "runs" / "can_tones"


def test_metrics_hold_the_baselines_and_the_video_class_accuracy(can_run: Path) -> None:
    recall = json.loads((can_run / "metrics.json").read_text())["recall_at_k"]
    assert {f"{b}.R@{k}" for b in BASELINES for k in (1, 5, 10)} <= set(recall)
    assert 0.0 <= recall["video_class_acc"] <= 1.0
    # the colour of the frames names the class: the visual and oracle baselines are far above chance
    assert recall["visual_nn.R@1"] > recall["chance.R@1"] + 0.3 and recall["oracle.R@1"] > recall["chance.R@1"] + 0.3
    metrics = json.loads((can_run / "metrics.json").read_text())
    assert set(metrics) == {"recall_at_k", "mean_energy"}
    for values in metrics.values():
        assert all(round(v, 6) == v for v in values.values())  # docs/evaluation.md: 6 decimals


def test_report_shows_baselines_fit_line_and_loss_balance(can_run: Path) -> None:
    page = (can_run / "report.html").read_text()
    table = page.split('id="baselines-recall_at_k"', 1)[1].split("</table>", 1)[0]
    assert table.count("<tr class=") == 1 + len(BASELINES)
    assert "visual nearest neighbour" in table and "oracle (the true test sound)" in table
    fit = json.loads((can_run / "stages.json").read_text())["stages"]["fit"]
    assert f"val at epoch {fit['best_epoch']}: spec_smooth_l1 " in html.unescape(page)
    assert 'alt="loss balance"' in page
    assert 'id="collapse"' not in page  # R@1 1.0 against chance 0.25; R@10 near its chance of 0.97 is no collapse
    history = json.loads((can_run / "history.json").read_text())
    assert len(history) == 12 and all(set(h["grad_norms"]) == {"spec_smooth_l1", "class_nll"} for h in history)
    assert (can_run / "log.txt").read_text().count("grad norm at the generator (batch 1)") == 12
    assert "### recall_at_k beside the reference baselines" in (can_run / "report.md").read_text()


def test_examples_are_spread_over_classes(can_run: Path) -> None:
    index = json.loads((can_run / "generated" / "index.json").read_text())
    labels = {c["id"]: c["label"] for c in index["clips"]}
    assert len(index["examples"]) == 4 and {labels[i] for i in index["examples"]} == {0, 1, 2, 3}
    assert len({labels[c["id"]] for c in index["clips"][:4]}) < 4  # the first four clips would repeat a class


def test_pick_examples_prefers_unseen_videos_and_classes() -> None:
    clips = [Clip(f"v{v}_{i}", label, None, None, 0.0, 0.5, group=f"v{v}")
             for v, label in ((1, 0), (1, 0), (2, 0), (3, 1), (3, 1), (4, 2))
             for i in range(2)]
    picked = pick_examples(clips, 5)
    assert [(c.label, c.group) for c in picked] == [(0, "v1"), (1, "v3"), (2, "v4"), (0, "v2"), (1, "v3")]
    assert pick_examples(clips, 0) == [] and len(pick_examples(clips, 100)) == len(clips)


class ConstantParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Constant(avgen.Generator):
    """Outputs one learned spectrogram for every clip, whatever the video: a collapsed model by construction."""

    def __init__(self, shape: avgen.GeneratorShape) -> None:
        super().__init__()
        self.rep = torch.nn.Parameter(torch.zeros(shape.rep_dim, shape.steps))

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"rep": self.rep.expand(features.shape[0], -1, -1)}


@pytest.fixture
def constant_generator(example_plugin: None):
    from avgen._core.plugins import get_registry, reset

    get_registry().register("generator", "test_report_reading", "constant_test",
                            lambda p, context: Constant(context.require_shape("constant_test")), ConstantParams)
    yield
    reset()  # the next access reloads the plugins without it


def test_collapse_warning_fires_on_a_constant_generator(constant_generator, tmp_path: Path, avgen_home: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "constant.toml"
    recipe.write_text(RECIPE.format(name="constant", generator="constant_test", generator_params="", extra_loss=""))
    code, _, lines = avgen_in_process(capsys, "run", str(recipe), "--out", str(tmp_path / "runs"))
    assert code == 0, lines
    run = tmp_path / "runs" / "constant"
    assert prediction_spread(run) == 0.0
    page = html.unescape((run / "report.html").read_text())
    assert 'id="collapse"' in page and "COLLAPSED?" in page
    assert "12 of 12 test clips get the same exemplar" in page
    assert "predictions are nearly identical across clips" in page
    assert any(line.startswith("warning: the model looks collapsed:") for line in lines)
    assert json.loads((run / "stages.json").read_text())["stages"]["report"]["collapse_warnings"]
    assert "COLLAPSED?" in (run / "report.md").read_text()


def test_a_result_above_chance_with_varied_predictions_is_not_flagged(tmp_path: Path) -> None:
    """The same checks on a run directory that is not collapsed: no warning."""
    from safetensors.torch import save_file

    run = tmp_path / "run"
    (run / "generated").mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    save_file({"rep": torch.rand(20, 6, 5, generator=g) + torch.arange(20.0)[:, None, None] / 10}, str(run / "generated" / "outputs.safetensors"))
    clips = [{"id": f"c{i}", "label": i % 4, "class": f"k{i % 4}", "predicted": i % 4, "exemplar_id": f"t{i % 7}"} for i in range(20)]
    (run / "generated" / "index.json").write_text(json.dumps({"clips": clips, "examples": []}))
    metrics = {"recall_at_k": {"R@1": 0.8, "chance.R@1": 0.25, "visual_nn.R@1": 0.9}}
    assert collapse_warnings(run, metrics) == []
    # R@1 within 2 standard errors of chance (0.25 + 2 sqrt(0.25 * 0.75 / 20) = 0.44) is flagged, above it is not
    assert collapse_warnings(run, {"recall_at_k": {"R@1": 0.4, "chance.R@1": 0.25}}) == [
        "recall_at_k: R@1 0.4000 (chance 0.2500) not above chance by 2 standard errors over 20 clips"]
    assert collapse_warnings(run, {"recall_at_k": {"R@1": 0.45, "chance.R@1": 0.25}}) == []


@pytest.mark.slow  # ~20 s: a second CLI run; tests/test_eval_compare.py checks the folding on run folders by default
def test_compare_folds_two_seeds_of_the_same_recipe(can_run: Path, tmp_path: Path) -> None:
    """A second seed of the same recipe by the real CLI, then `avgen compare --json`: one row, mean and std."""
    recipe = can_run.parent.parent / "can.toml"
    home = can_run.parent.parent / "home"
    proc = run_avgen("run", str(recipe), "--out", str(tmp_path / "seed1"), "--set", "run.seed=1", env={"AVGEN_HOME": str(home)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    other = tmp_path / "seed1" / "can_tones"
    proc = run_avgen("compare", str(can_run), str(other), "--json", "-o", str(tmp_path / "compare.html"), cwd=tmp_path,
                     env={"AVGEN_HOME": str(home)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout)
    runs = [r for r in rows if r["source"] == "run"]
    # one folded row (whether a seed of this tiny run is flagged "[collapsed? ...]" depends on float rounding:
    # the marker has its own test below)
    assert len(runs) == 1 and runs[0]["model"].startswith("can_tones (2 seeds)") and runs[0]["seeds"] == [0, 1]
    energies = [json.loads((d / "metrics.json").read_text())["mean_energy"]["raw_db"] for d in (can_run, other)]
    assert energies[0] != energies[1]  # the seed changed the trained model
    mean = (energies[0] + energies[1]) / 2
    assert runs[0]["metrics"]["mean_energy/raw_db"] == pytest.approx(mean)
    assert runs[0]["std"]["mean_energy/raw_db"] == pytest.approx(abs(energies[0] - energies[1]) / 2 ** 0.5)
    assert {r["baseline"] for r in rows if r["source"] == "baseline"} == set(BASELINES)
    assert "± " in (tmp_path / "compare.html").read_text()
