"""Owens, CAN and POCAN on the synthetic benchmark with several seeds: mean +- std next to the paper.

    python docs/scripts/reproduce_synthetic.py --seeds 0 1 2 --videos 48 --epochs 30

Runs `avgen run recipes/quickstart.toml` once per seed (the dataset stays the same; the
seed changes the initial weights and the batch order) and prints a markdown table for
docs/reproduction.md. Settings are the recipe's; nothing is chosen on the test split.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PAPER = {  # GHD, DESIGN.md section 1: R@1, R@5, R@10, classifier accuracy on the raw sound
    "owens": (0.1734, 0.4349, 0.5838, 0.2011),
    "can": (0.3013, 0.5364, 0.6476, 0.3546),
    "pocan": (0.3302, 0.5719, 0.6553, 0.3632),
}
COLUMNS = [("recall_at_k", "R@1"), ("recall_at_k", "R@5"), ("recall_at_k", "R@10"), ("sound_classifier", "acc_raw")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--videos", type=int, default=48, help="synthetic videos (quickstart: 24)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("runs/reproduction"))
    args = parser.parse_args()
    results: dict[str, list[dict]] = {"owens": [], "can": [], "pocan": []}
    real = []
    started = time.perf_counter()
    for seed in args.seeds:
        cmd = [sys.executable, "-m", "avgen", "run", str(REPO / "recipes" / "quickstart.toml"),
               "--out", str(args.out), "--set", f"run.name=seed{seed}", "--set", f"run.seed={seed}",
               "--set", f"data.videos={args.videos}", "--set", f"data.root=data/synthetic_hits_{args.videos}",
               "--set", f"train.epochs={args.epochs}"]
        print("$", " ".join(cmd), file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        for method in results:
            metrics = json.loads((args.out / f"seed{seed}" / method / "metrics.json").read_text())
            results[method].append(metrics)
            real.append(metrics["sound_classifier"]["acc_real"])
    print(f"{len(args.seeds)} seeds, {args.videos} videos, {args.epochs} epochs, "
          f"{time.perf_counter() - started:.0f} s\n")
    print("| method | R@1 | R@5 | R@10 | classifier acc (raw) | paper R@1 / R@5 / R@10 / acc (GHD) |")
    print("|---|---|---|---|---|---|")
    for method, runs in results.items():
        cells = []
        for metric, key in COLUMNS:
            values = [r[metric][key] for r in runs]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.4f} ± {sd:.4f}")
        paper = " / ".join(f"{v:.4f}" for v in PAPER[method])
        print(f"| {method} | " + " | ".join(cells) + f" | {paper} |")
    print(f"| real sound | | | | {statistics.mean(real):.4f} | 0.5134 |")
    dataset = json.loads((args.out / f"seed{args.seeds[0]}" / "pocan" / "dataset.json").read_text())
    print(f"\nclips: {dataset['splits']}, classes: {len(dataset['class_names'])}")


if __name__ == "__main__":
    main()
