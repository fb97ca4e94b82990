"""How much of the class the video tells, and how much the sound tells: two linear probes on a recipe's data.

    python docs/scripts/probe.py recipes/synthetic_hard.toml
    python docs/scripts/probe.py recipes/quickstart.toml --set data.videos=48

Featurizes the recipe's train, val and test splits exactly as `avgen run` does (through the
feature cache, so a second call is quick), then fits a multinomial logistic regression on
the training split and reports its test accuracy for
- video: the time-averaged frame features of the recipe's encoder;
- sound: the log of the time-averaged real-audio representation (the recipe's STFT).
The L2 strength is chosen on the val split from a fixed grid; nothing is chosen on test.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # L2 weight on the mean cross-entropy


def fit_logistic(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float, steps: int = 300) -> torch.Tensor:
    """Weights [dim + 1, classes] of a multinomial logistic regression (L-BFGS, float64)."""
    x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    w = torch.zeros(x1.shape[1], classes, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1, max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x1 @ w, y) + l2 * w[:-1].square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def accuracy(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    return float(((x1 @ w).argmax(1) == y).double().mean())


def probe(train: torch.Tensor, ytr: torch.Tensor, val: torch.Tensor, yva: torch.Tensor, test: torch.Tensor,
          yte: torch.Tensor, classes: int) -> dict[str, float]:
    """Standardize with training statistics, pick L2 on val, refit on train, score test."""
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    train, val, test = ((t - mean) / std for t in (train, val, test))
    scores = {l2: accuracy(fit_logistic(train, ytr, classes, l2), val, yva) for l2 in GRID} if len(val) else {GRID[1]: 0.0}
    best = max(scores, key=lambda l2: (scores[l2], l2))  # ties: the stronger regularization
    w = fit_logistic(train, ytr, classes, best)
    return {"test_accuracy": accuracy(w, test, yte), "train_accuracy": accuracy(w, train, ytr),
            "val_accuracy": scores[best], "l2": best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, as in avgen run (repeatable)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result to this file")
    args = parser.parse_args()

    from avgen import AvgenError
    from avgen._core.recipefiles import load_recipes
    from avgen._core.runner import Run

    try:
        recipe = load_recipes(args.recipe, args.overrides)[0]  # variants share data and encoder
        torch.manual_seed(0)
        with tempfile.TemporaryDirectory(prefix="avgen-probe-") as scratch:
            run = Run(recipe, Path(scratch) / "run", torch.device("cpu"))
            run.dataset.prepare(None)
            splits = {split: run.featurized(split) for split in ("train", "val", "test")}
            classes = len(run.dataset.class_names)
            y = {s: d.label.long() for s, d in splits.items()}
            video = {s: d.features.double().mean(1) for s, d in splits.items()}
            sound = {s: (d.rep.double().mean(2) + 1e-4).log() for s, d in splits.items()}
            result = {
                "recipe": str(args.recipe), "overrides": args.overrides, "dataset": recipe.data.params,
                "clips": {s: len(d.clips) for s, d in splits.items()}, "classes": classes,
                "chance": 1 / classes,
                "majority": float((y["test"] == torch.bincount(y["train"], minlength=classes).argmax()).double().mean()),
                "video": probe(video["train"], y["train"], video["val"], y["val"], video["test"], y["test"], classes),
                "sound": probe(sound["train"], y["train"], sound["val"], y["val"], sound["test"], y["test"], classes),
            }
    except AvgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"clips {result['clips']}, {classes} classes, chance {result['chance']:.3f}, majority {result['majority']:.3f}")
    for what in ("video", "sound"):
        r = result[what]
        print(f"{what:5s} probe: test accuracy {r['test_accuracy']:.3f} (train {r['train_accuracy']:.3f}, "
              f"val {r['val_accuracy']:.3f}, l2 {r['l2']:g})")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
