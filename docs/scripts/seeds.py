"""Run a recipe over several seeds and print mean and std of every method's metrics.

    python docs/scripts/seeds.py recipes/synthetic_hard.toml --seeds 0 1 2
    python docs/scripts/seeds.py recipes/quickstart.toml --set data.videos=48 --md table.md --json table.json
    python docs/scripts/seeds.py recipes/synthetic_hard.toml --collect      (tabulate runs already made)

Runs `avgen run RECIPE --out OUT/seed<S> --set run.seed=<S>` per seed (a finished run is
resumed, so it is not trained again), reads each variant's metrics.json, and prints one row
per variant (any names: owens, can, pocan, flow_matching, ...) with mean ± sample standard
deviation over the seeds of R@1/5/10, the sound classifier's accuracy on the raw sound,
onset metrics, log-spectral distance and SoundNet Frechet distance (the columns a run has).
The seed changes the initial weights and the batch order; the dataset (data.seed) stays.
Then, per column, which orderings of the variants hold with a margin above 2 std.
`--md` writes the tables with every metric; `--json` the per-seed values and summaries.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

# (metric, key, label, higher is better); a column shows when some run has it
COLUMNS = [
    ("recall_at_k", "R@1", "R@1", True),
    ("recall_at_k", "R@5", "R@5", True),
    ("recall_at_k", "R@10", "R@10", True),
    ("sound_classifier", "acc_raw", "cls acc raw", True),
    ("onset", "onset_acc_raw", "onset acc", True),
    ("onset", "onset_ap_raw", "onset AP", True),
    ("onset", "onset_count_acc_raw", "onset count acc", True),
    ("log_spectral_distance", "lsd_raw", "LSD", False),
    ("soundnet_fd", "fd_raw", "SoundNet FD", False),
]
PAPER = {  # Greatest Hits (another dataset), POCAN paper (Chen et al. 2018) Tables 2 and 3: R@1, R@5, R@10, classifier accuracy on raw sound
    "owens": {"R@1": 0.1734, "R@5": 0.4349, "R@10": 0.5838, "cls acc raw": 0.2011},
    "can": {"R@1": 0.3013, "R@5": 0.5364, "R@10": 0.6476, "cls acc raw": 0.3546},
    "pocan": {"R@1": 0.3302, "R@5": 0.5719, "R@10": 0.6553, "cls acc raw": 0.3632},
}


def run_dirs(recipe: Path, overrides: list[str], out: Path, seed: int) -> dict[str, Path]:
    """variant name -> run directory, as `avgen run --out OUT` places them."""
    from avgen._core.recipefiles import load_recipes
    dirs = {}
    for r in load_recipes(recipe, [*overrides, f"run.seed={seed}"]):
        dirs[r.run.name] = out / r.run.group / r.run.name
    return dirs


def flatten(metrics: dict) -> dict[str, float]:
    """{"metric/key": value} for every number in a metrics.json."""
    flat = {}
    for metric, values in metrics.items():
        if isinstance(values, dict):
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    flat[f"{metric}/{key}"] = float(value)
    return flat


def summary(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def cell(values: list[float] | None) -> str:
    if not values:
        return ""
    mean, sd = summary(values)
    return f"{mean:.4f} ± {sd:.4f}"


def orderings(per_variant: dict[str, list[float]], higher: bool) -> list[str]:
    """'a > b' for each pair whose means differ (in the good direction) by more than 2 x the larger std."""
    stats = {v: summary(x) for v, x in per_variant.items() if x}
    ranked = sorted(stats, key=lambda v: stats[v][0], reverse=higher)
    lines = []
    for i, a in enumerate(ranked):
        for b in ranked[i + 1:]:
            gap = abs(stats[a][0] - stats[b][0])
            bound = 2 * max(stats[a][1], stats[b][1])
            verdict = "holds" if gap > bound else "not resolved"
            lines.append(f"{a} better than {b}: gap {gap:.4f} vs 2 std {bound:.4f}: {verdict}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/seeds"), help="run folders: OUT/seed<S>/<run.name>/<variant>")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value for every seed, as in avgen run (repeatable)")
    parser.add_argument("--collect", action="store_true", help="do not run; tabulate the runs already in OUT")
    parser.add_argument("--md", type=Path, default=None, help="write the markdown tables (every metric) here")
    parser.add_argument("--json", type=Path, default=None, help="write per-seed values and summaries here")
    args = parser.parse_args()
    if len(args.seeds) != len(set(args.seeds)):
        parser.error("--seeds: each seed once")

    from avgen import AvgenError

    values: dict[str, dict[str, list[float]]] = {}  # variant -> "metric/key" -> one value per seed
    try:
        for seed in args.seeds:
            out = args.out / f"seed{seed}"
            if not args.collect:
                cmd = [sys.executable, "-m", "avgen", "run", str(args.recipe), "--out", str(out),
                       "--set", f"run.seed={seed}"]
                for item in args.overrides:
                    cmd += ["--set", item]
                print("$", " ".join(cmd), file=sys.stderr, flush=True)
                done = subprocess.run(cmd, stdout=subprocess.DEVNULL)
                if done.returncode != 0:
                    raise SystemExit(f"seed {seed}: avgen run exited with {done.returncode}")
            for variant, run_dir in run_dirs(args.recipe, args.overrides, out, seed).items():
                path = run_dir / "metrics.json"
                if not path.is_file():
                    raise AvgenError(f"{path} is missing; run without --collect or finish that run")
                for key, value in flatten(json.loads(path.read_text())).items():
                    values.setdefault(variant, {}).setdefault(key, []).append(value)
    except AvgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

    variants = list(values)
    columns = [c for c in COLUMNS if any(f"{c[0]}/{c[1]}" in values[v] for v in variants)]
    lines = [f"{args.recipe}, seeds {' '.join(map(str, args.seeds))}"
             + (f", {' '.join('--set ' + o for o in args.overrides)}" if args.overrides else "")
             + ": mean ± sample std over seeds", ""]
    lines.append("| method | " + " | ".join(c[2] for c in columns) + " |")
    lines.append("|---|" + "---|" * len(columns))
    for v in variants:
        lines.append(f"| {v} | " + " | ".join(cell(values[v].get(f"{c[0]}/{c[1]}")) for c in columns) + " |")
    real = [x for v in variants for x in values[v].get("sound_classifier/acc_real", [])]
    if real:
        lines.append("| real sound | " + " | ".join(f"{statistics.mean(real):.4f}" if c[1] == "acc_raw" else ""
                                                   for c in columns) + " |")
    papered = [v for v in variants if v in PAPER]
    if papered:
        lines += ["", "Paper (Chen et al. 2018), on Greatest Hits with ResNet-200: another dataset, for reference only.", "",
                  "| method | R@1 | R@5 | R@10 | cls acc raw |", "|---|---|---|---|---|"]
        lines += [f"| {v} (paper, GHD) | " + " | ".join(f"{PAPER[v][k]:.4f}" for k in ("R@1", "R@5", "R@10", "cls acc raw"))
                  + " |" for v in papered]
    lines += ["", "Orderings (a margin above 2 x the larger std holds):"]
    for metric, key, label, higher in columns:
        per = {v: values[v].get(f"{metric}/{key}", []) for v in variants}
        lines += [f"- {label}: {line}" for line in orderings(per, higher)]
    print("\n".join(lines))
    if args.md is not None:
        every = sorted({k for v in variants for k in values[v]})
        full = ["", "Every metric:", "", "| metric | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants)]
        full += [f"| {k} | " + " | ".join(cell(values[v].get(k)) for v in variants) + " |" for k in every]
        args.md.write_text("\n".join(lines + full) + "\n")
    if args.json is not None:
        args.json.write_text(json.dumps({
            "recipe": str(args.recipe), "seeds": args.seeds, "overrides": args.overrides, "values": values,
            "summary": {v: {k: dict(zip(("mean", "std"), summary(x))) for k, x in values[v].items()} for v in variants},
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
