"""Training throughput of 1 process against N `torchrun` processes (DDP, gloo on CPU) on this machine.

    python benchmarks/bench_ddp.py [--processes 2] [--clips 400] [--epochs 3] [--frames 15] [--feature-dim 2048]

Trains CAN (class NLL + 50 x smooth-L1, paper shapes: features [B, frames, 2048], STFT
targets [B, 1025, 22], batch 40) with `avgen._core.train.fit` on random tensors, once in one
process using all cores and once under `torchrun --nproc_per_node N` with cores / N threads
per process, and prints clips/s of each and the speed-up. The ideal speed-up with the same
total cores is 1.0x (DDP adds processes, not cores); N x is what N machines or N cores per
process give. The loss curves must agree (tests/test_train_ddp.py checks that, -m slow).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from _timing import record  # benchmarks/_timing.py

SCRIPT = textwrap.dedent(
    """
    import sys, time, json
    from pathlib import Path
    import torch
    import avgen
    from avgen import GeneratorShape
    from avgen._core.recipe import TrainParams
    from avgen._core.train import WeightedLoss, fit
    run_dir, clips, epochs, frames, dim, threads = Path(sys.argv[1]), *map(int, sys.argv[2:7])
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    classes = 17
    data = {{"features": torch.rand(clips, frames, dim, generator=g), "rep": torch.rand(clips, 1025, 22, generator=g),
             "wave": torch.zeros(clips, 8), "label": torch.randint(0, classes, (clips,), generator=g)}}
    torch.manual_seed(0)
    model = avgen.create("generator", "can_lstm", context={{"shape": GeneratorShape(dim, 1025, 22, classes)}})
    losses = [WeightedLoss("class_nll", 1.0, avgen.create("loss", "class_nll")),
              WeightedLoss("spec_smooth_l1", 50.0, avgen.create("loss", "spec_smooth_l1"))]
    result = fit(model=model, losses=losses, train=data, val=None, params=TrainParams(batch_size=40, epochs=epochs),
                 run_dir=run_dir, seed=0, device=torch.device("cpu"))
    """
)


def train(script: Path, run_dir: Path, processes: int, threads: int, args: argparse.Namespace) -> float:
    """Clips per second over the epochs after the first (warm-up), from history.json."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = str(threads)
    tail = [str(run_dir), str(args.clips), str(args.epochs), str(args.frames), str(args.feature_dim), str(threads)]
    if processes == 1:
        command = [sys.executable, str(script), *tail]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                   str(script), *tail]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    history = json.loads((run_dir / "history.json").read_text())
    timed = history[1:] or history
    return args.clips * len(timed) / sum(entry["seconds"] for entry in timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--clips", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--frames", type=int, default=15, help="video frames per clip (paper GHD: 15)")
    parser.add_argument("--feature-dim", type=int, default=2048)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    per_process = max(1, cores // args.processes)
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "train_script.py"
        script.write_text(SCRIPT.format())
        single = train(script, Path(tmp) / "one", 1, cores, args)
        multi = train(script, Path(tmp) / "many", args.processes, per_process, args)
    print(f"{cores} cores; {args.clips} clips, batch 40, features [{args.frames}, {args.feature_dim}], CAN LSTM")
    print(f"  1 process x {cores} threads:            {single:8.1f} clips/s")
    print(f"  {args.processes} processes x {per_process} thread(s) (torchrun): {multi:8.1f} clips/s   "
          f"speed-up {multi / single:.2f}x (same cores: ideal 1.0x; {args.processes}x needs {args.processes} x the cores)")
    record("ddp", single_clips_per_s=single, multi_clips_per_s=multi, speedup=multi / single)


if __name__ == "__main__":
    main()
