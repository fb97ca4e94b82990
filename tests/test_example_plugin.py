"""The example plugin's own generator and loss, trained end to end through the CLI entry point (in this process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import EXAMPLE, avgen_in_process
from test_generate import wide_consoles


def test_example_generator_and_loss_train_in_a_recipe_and_beat_the_training_mean(tmp_path: Path, avgen_home: Path,
                                                                                  example_plugin: None,
                                                                                  capsys: pytest.CaptureFixture[str],
                                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    wide_consoles(monkeypatch)
    code, out, lines = avgen_in_process(capsys, "run", str(EXAMPLE / "tones_generate.toml"), "--out", str(tmp_path / "runs"))
    assert code == 0, lines[-20:]
    run_dir = tmp_path / "runs" / "tones_frame_linear"
    fit = json.loads((run_dir / "stages.json").read_text())["stages"]["fit"]
    assert fit["epochs"] == 20
    # the plugin's loss, printed and recorded next to the video-blind mean predictor's: training used the video
    assert fit["val"]["rep_l1"] < 0.95 * fit["baseline_val"]["rep_l1"]
    assert "val at epoch 20: rep_l1" in "\n".join(lines)  # the console writes to stderr; stdout holds the run directory
    assert "val at epoch" not in out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"mean_energy", "recall_at_k"} <= set(metrics)
    assert (run_dir / "generated").is_dir() and (run_dir / "report.html").is_file()
