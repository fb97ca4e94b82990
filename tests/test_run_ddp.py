"""`torchrun --nproc_per_node 2 -m avgen run`: sharded featurize, DDP training, rank 0 writes (slow)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_generate import RECIPE
from conftest import run_avgen


@pytest.mark.slow
def test_two_process_run_matches_one_process(tmp_path: Path, example_plugin: None) -> None:
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(RECIPE.format(root=tmp_path / "data"))
    env = {"AVGEN_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    single = run_avgen("run", str(recipe), "--out", str(tmp_path / "one"), "--set", "train.epochs=3", env=env)
    assert single.returncode == 0, single.stderr[-2000:]
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    proc = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "-m", "avgen", "run", str(recipe), "--out", str(tmp_path / "two"),
         "--set", "train.epochs=3", "--set", "data.root=" + json.dumps(str(tmp_path / "data2"))],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "tiny" / "history.json").read_text())
    two = json.loads((tmp_path / "two" / "tiny" / "history.json").read_text())
    assert [round(h["train"]["total"], 4) for h in one] == [round(h["train"]["total"], 4) for h in two]
    stages = json.loads((tmp_path / "two" / "tiny" / "stages.json").read_text())["stages"]
    assert list(stages) == ["prepare", "featurize", "fit", "generate", "evaluate", "report"]
    assert proc.stdout.count("run directory:") == 1  # only rank 0 speaks
