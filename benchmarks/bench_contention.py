"""A fit epoch alone and beside one competing CPU-bound process: the slowdown, per thread setting.

    python benchmarks/bench_contention.py [--methods pocan,can] [--settings torch,avgen] [--clips 360]
                                          [--competitor torch|python] [--repeats 2]

Each measurement runs ``avgen._core.train.fit`` for two epochs in a fresh process at the quickstart's
shapes (360 clips, batch 40, EfficientNet-Lite0 features [4, 1280], STFT [1025, 22], 0.5 s at
22 050 Hz, 17 classes; POCAN = class NLL + 50 x smooth-L1 + 100 x SoundNet conv7, CAN without
SoundNet) and reports the second epoch's seconds (history.json's ``seconds``). Thread settings:

- ``torch``: torch's own defaults (threads = cores, spinning OpenMP waits), as avgen ran before;
- ``avgen``: ``avgen._core.threads`` (threads = cores, one inter-op thread, OMP_WAIT_POLICY=PASSIVE);
- ``one``: one torch thread.

The competitor is a second process started just before the epoch: ``torch`` runs 1024 x 1024
matmuls with torch's default threads, ``python`` a pure-Python busy loop. Each setting's slowdown
(with / alone, the median of --repeats pairs, alone and beside measured back to back) is printed,
with the load average, which shows what else was running (the target: < 2.5x).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _timing import record  # benchmarks/_timing.py

HERE = Path(__file__).resolve()
TARGET = 2.5
SETTINGS = {
    "torch": {"OMP_WAIT_POLICY": None},  # torch's defaults
    "avgen": {"OMP_WAIT_POLICY": "PASSIVE"},  # avgen._core.threads.prefer_passive_wait + plan_threads
    "one": {"OMP_WAIT_POLICY": "PASSIVE"},
}

COMPETITORS = {
    "torch": "import torch\na = torch.randn(1024, 1024)\nwhile True:\n    a @ a\n",
    "python": "x = 0\nwhile True:\n    x = (x + 1) % 1000003\n",
}


def child(method: str, setting: str, clips: int, epochs: int) -> None:
    """One fit (in this process); prints {"seconds": last epoch's seconds}."""
    import torch

    import avgen
    from avgen import GeneratorShape
    from avgen._core.errors import AvgenError
    from avgen._core.recipe import TrainParams
    from avgen._core.threads import apply_threads, plan_threads
    from avgen._core.train import WeightedLoss, fit
    if setting == "avgen":
        apply_threads(plan_threads())
    elif setting == "one":
        apply_threads(plan_threads(1))
    torch.manual_seed(0)
    classes, frames, dim, samples = 17, 4, 1280, 11025
    rep = avgen.create("representation", "stft", n_fft=2048, hop_length=512)
    g = torch.Generator().manual_seed(0)
    label = torch.arange(clips) % classes
    tone = torch.sin(torch.arange(samples) * (label[:, None] + 3) * 0.01)
    wave = (tone * torch.rand(clips, 1, generator=g) + 0.01 * torch.randn(clips, samples, generator=g)) * 0.3
    train = {"features": torch.randn(clips, frames, dim, generator=g).relu(), "rep": rep.encode(wave),
             "wave": wave, "label": label}
    shape = GeneratorShape(dim, rep.dim, train["rep"].shape[-1], classes)
    model = avgen.create("generator", "can_lstm", context={"shape": shape})
    losses = [WeightedLoss("class_nll", 1.0, avgen.create("loss", "class_nll")),
              WeightedLoss("spec_smooth_l1", 50.0, avgen.create("loss", "spec_smooth_l1"))]
    if method == "pocan":
        try:
            perceptual = avgen.create("loss", "soundnet_perceptual", context={"representation": rep})
        except AvgenError:  # weights not fetched: a random SoundNet costs the same
            from avgen_soundnet import SoundNet8
            from avgen_soundnet.perceptual import PerceptualParams, SoundNetPerceptual

            perceptual = SoundNetPerceptual(SoundNet8().requires_grad_(False), PerceptualParams(), 22050)
        losses.append(WeightedLoss("soundnet_perceptual", 100.0, perceptual))
    params = TrainParams(epochs=epochs, batch_size=40, grad_norms=False)
    from rich.console import Console

    with tempfile.TemporaryDirectory() as run_dir:
        result = fit(model=model, losses=losses, train=train, val=None, params=params, run_dir=Path(run_dir),
                     seed=0, device=torch.device("cpu"), representation=rep, console=Console(quiet=True))
    print(json.dumps({"seconds": result.history[-1]["seconds"], "threads": torch.get_num_threads()}))


def measure(method: str, setting: str, clips: int, epochs: int) -> float:
    """Seconds of the last epoch of a fit in a fresh process with the setting's environment."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # the settings choose, not the caller
    for key, value in SETTINGS[setting].items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    proc = subprocess.run([sys.executable, str(HERE), "--child", method, "--settings", setting, "--clips", str(clips),
                           "--epochs", str(epochs)], env=env, capture_output=True, text=True, cwd=HERE.parent)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["seconds"])


def beside_competitor(competitor: str, fn) -> float:
    """fn() while a competing process runs (started 1 s before, so that it is busy)."""
    proc = subprocess.Popen([sys.executable, "-c", COMPETITORS[competitor]], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        return fn()
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="pocan,can")
    parser.add_argument("--settings", default="torch,avgen,one")
    parser.add_argument("--clips", type=int, default=360)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per fit; the last one is timed")
    parser.add_argument("--competitor", choices=sorted(COMPETITORS), default="torch")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.settings, args.clips, args.epochs)
        return
    from avgen._core.threads import available_cores

    print(f"{available_cores()} cores; competitor: {args.competitor}; load average before: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    for method in args.methods.split(","):
        for setting in args.settings.split(","):
            pairs = []
            for _ in range(args.repeats):
                alone = measure(method, setting, args.clips, args.epochs)
                loaded = beside_competitor(args.competitor, lambda: measure(method, setting, args.clips, args.epochs))
                pairs.append((alone, loaded))
            alone = statistics.median(a for a, _ in pairs)
            loaded = statistics.median(b for _, b in pairs)
            ratio = statistics.median(b / a for a, b in pairs)
            verdict = "meets" if ratio < TARGET else "MISSES"
            print(f"  {method:5s} {setting:5s}  alone {alone:6.2f} s  beside one {args.competitor} process "
                  f"{loaded:6.2f} s  slowdown {ratio:5.2f}x ({verdict} < {TARGET}x)  "
                  f"pairs {', '.join(f'{a:.2f}/{b:.2f}' for a, b in pairs)}  "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
            record("contention", **{f"{method}_{setting}_slowdown": ratio})


if __name__ == "__main__":
    main()
