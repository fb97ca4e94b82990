"""`avgen run --only STAGE` on a recipe with several variants: a stage before evaluate leaves no metrics to compare,
so the run skips the comparison, says so in one line and exits 0."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import TINY_RECIPE, error_lines, run_avgen

TWO_SEEDS = TINY_RECIPE.format(root="data") + """
[[variant]]
name = "seed0"
run = { seed = 0 }

[[variant]]
name = "seed1"
run = { seed = 1 }
"""


def test_only_prepare_on_variants_skips_the_comparison(tmp_path: Path, example_plugin: None) -> None:
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TWO_SEEDS)
    proc = run_avgen("run", str(recipe), "--only", "prepare", "--out", str(tmp_path / "runs"), cwd=tmp_path,
                     env={"AVGEN_HOME": str(tmp_path / "home")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no metrics.json" not in proc.stderr
    skipped = [line for line in error_lines(proc) if line.startswith("no comparison")]
    assert skipped == ["no comparison: --only prepare runs no evaluate stage (run the same command without --only "
                       "to finish the runs and compare them)"], proc.stderr[-3000:]
    group = tmp_path / "runs" / "tiny"
    assert sorted(p.name for p in group.iterdir()) == ["seed0", "seed1"]  # no compare.html beside the runs
    assert not list(tmp_path.rglob("compare.html"))
    for name in ("seed0", "seed1"):
        ledger = json.loads((group / name / "stages.json").read_text())
        assert list(ledger["stages"]) == ["prepare"], name
        assert not (group / name / "metrics.json").exists()
