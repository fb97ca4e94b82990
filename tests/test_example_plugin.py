"""The example plugin's own generator and loss, trained end to end through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import EXAMPLE, run_avgen


def test_example_generator_and_loss_train_in_a_recipe_and_beat_the_training_mean(tmp_path: Path, avgen_home: Path,
                                                                                  example_plugin: None) -> None:
    proc = run_avgen("run", str(EXAMPLE / "tones_generate.toml"), "--out", str(tmp_path / "runs"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "runs" / "tones_frame_linear"
    fit = json.loads((run_dir / "stages.json").read_text())["stages"]["fit"]
    assert fit["epochs"] == 20
    # the plugin's loss, printed and recorded next to the video-blind mean predictor's: training used the video
    assert fit["val"]["rep_l1"] < 0.95 * fit["baseline_val"]["rep_l1"]
    assert "val at epoch 20: rep_l1" in proc.stderr  # the console writes to stderr; stdout holds the run directory
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"mean_energy", "recall_at_k"} <= set(metrics)
    assert (run_dir / "generated").is_dir() and (run_dir / "report.html").is_file()
