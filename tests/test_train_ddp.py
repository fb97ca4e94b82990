"""DistributedDataParallel: 2 CPU processes (gloo) follow the same loss curve as 1 process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

TESTS = Path(__file__).parent

SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from test_train_fit import CPU, losses_for, make_model, synthetic_split, train_params
    from avgen._core.train import fit
    run_dir = Path(sys.argv[1])
    # batch 25 is odd: every global batch splits 13/12 across two ranks, and the last one holds 15
    fit(model=make_model("can_lstm", hidden=16), losses=losses_for("can_lstm"), train=synthetic_split(240, 1),
        val=synthetic_split(60, 2), params=train_params(epochs=3, batch_size=25), run_dir=run_dir, seed=4, device=CPU)
    """
)


def run_script(script: Path, run_dir: Path, processes: int) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    if processes == 1:
        command = [sys.executable, str(script), str(run_dir)]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                   str(script), str(run_dir)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_processes_follow_the_single_process_loss_curve(tmp_path):
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT.format(tests=str(TESTS)))
    for processes in (1, 2):
        done = run_script(script, tmp_path / f"world{processes}", processes)
        assert done.returncode == 0, done.stderr[-3000:]
    single = json.loads((tmp_path / "world1" / "history.json").read_text())
    double = json.loads((tmp_path / "world2" / "history.json").read_text())
    assert len(single) == len(double) == 3
    for a, b in zip(single, double):
        for split in ("train", "val"):
            for term, value in a[split].items():
                assert b[split][term] == pytest.approx(value, rel=1e-5, abs=1e-6), (a["epoch"], split, term)
    print(f"\nDDP: 1-process train totals {[round(h['train']['total'], 6) for h in single]}, "
          f"2-process {[round(h['train']['total'], 6) for h in double]}")
    one = load_file(tmp_path / "world1" / "checkpoints" / "last.safetensors")
    two = load_file(tmp_path / "world2" / "checkpoints" / "last.safetensors")
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5)
    # rank 1 wrote nothing of its own: exactly one set of checkpoint files
    assert sorted(p.name for p in (tmp_path / "world2" / "checkpoints").iterdir()) == [
        "best.json", "best.safetensors", "last.json", "last.safetensors"]
