"""A run: prepare -> featurize -> fit -> generate -> evaluate -> report, resumable from its directory.

``STAGES`` is the stage table: each stage is a function over named inputs that returns what
it produced (its ``info``, recorded in the ledger ``stages.json``); ``Run`` gathers the inputs,
holds the split tensors between stages, and skips the stages the ledger records as done.
The run directory lives in ``avgen._core.rundir``, featurization and split storage in
``avgen._core.featurize``, the training loop in ``avgen._core.train``, the checkpoint format in
``avgen._core.checkpoint`` and the generate stage in ``avgen._core.generate`` (a whole video's sound:
``avgen._core.videosound``; a trained model rebuilt: ``avgen._core.loading``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from rich.console import Console

from avgen._core.atomic import write_json
from avgen._core.baseline import baseline_losses, compare_line
from avgen._core.build import (build_dataset, build_encoder, build_generator, build_loss, build_representation,
                               check_dataset, generator_shape, rehearse)
from avgen._core.cache import FeatureCache, cache_key
from avgen._core.checkpoint import checkpoint_meta
from avgen._core.console import make_console, progress_bar
from avgen._core.distributed import barrier, join_process_group
from avgen._core.errors import AvgenError
from avgen._core.featurize import Featurizer, sample_rate, warn_skipped
from avgen._core.splits import SplitData
from avgen._core.components import EvalContext, GeneratorShape
from avgen._core.recipe import Recipe
from avgen._core.plugins import get_component
from avgen._core.rundir import (SPLITS, STAGES, RunDir, empty_split_warning, environment_record, run_log, skipped_reasons,
                                write_skipped)
from avgen._core.threads import ThreadPlan

log = logging.getLogger("avgen")


# ---------------------------------------------------------------- the stages


def prepare(dataset: Any, data_name: str, run_dir: Path, console: Console,
            skipped_clips: dict[str, list[str]]) -> dict[str, Any]:
    """Make the dataset available; writes dataset.json and skipped.txt. Info: clips per split."""
    with progress_bar(console) as progress:
        dataset.prepare(progress)
    counts = check_dataset(data_name, dataset, SPLITS)  # the plugin's contract, before any clip is featurized
    rows = dataset_skipped_rows(dataset)
    warn_skipped(console, [message for split in SPLITS for message in rows[split]], "annotation rows", once=True)
    if counts["train"] == 0:
        raise AvgenError(f"dataset '{data_name}': the train split has no clips; check its root and split files")
    write_json(run_dir / "dataset.json", {
        "name": data_name, "class_names": list(dataset.class_names), "splits": counts,
        "sample_rate": dataset.sample_rate, "clip_seconds": dataset.clip_seconds, "provenance": dataset.provenance})
    write_skipped(run_dir, rows, skipped_clips)
    console.print("clips: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if warning := empty_split_warning(counts):
        console.print(warning, markup=False)
    skipped = {split: len(rows[split]) for split in SPLITS if rows[split]}
    if not skipped:
        return {"clips": counts}
    reasons = skipped_reasons([message for split in SPLITS for message in rows[split]])
    log.info("annotation rows dropped: %d (%s): %s", sum(skipped.values()),
             ", ".join(f"{k} {v}" for k, v in skipped.items()), "; ".join(f"{k} {v}" for k, v in reasons.items()))
    return {"clips": counts, "skipped_rows": skipped, "skipped_reasons": reasons}


def featurize(featurizer: Featurizer, run_dir: Path, rank: int, world: int) -> tuple[dict[str, SplitData], dict[str, Any]]:
    """Every split's tensors (filling the feature cache); info: clips encoded and from cache per split.

    Under torchrun each rank fills the per-clip cache for its shard, then rank 0 writes the split
    entries and the other ranks map them.
    """
    splits: dict[str, SplitData] = {}
    stats: dict[str, Any] = {}
    if world > 1:
        for split in SPLITS:
            featurizer.fill_clip_cache(split, world)
        barrier(world)
    featurizer.skipped.clear()
    for turn in (0, 1) if world > 1 else (0,):
        if (rank == 0) == (turn == 0):
            for split in SPLITS:
                splits[split], stats[split] = featurizer.featurize_split(split)
        if turn == 0:
            barrier(world)
    if rank == 0:
        write_skipped(run_dir, dataset_skipped_rows(featurizer.dataset), featurizer.skipped)
    return splits, stats


def fit(recipe: Recipe, model: torch.nn.Module, shape: GeneratorShape, train: SplitData, val: SplitData,
        representation: Any, meta: dict[str, Any], run_dir: Path, device: torch.device, console: Console) -> dict[str, Any]:
    """Train the generator (checkpoints/, history.json); info: best epoch, and its val loss against the baseline."""
    from avgen._core.train import WeightedLoss, fit as fit_model
    losses = [WeightedLoss(spec.name, spec.weight, build_loss(spec, representation, device)) for spec in recipe.loss]
    # (a recipe with a [generator] has at least one [[loss]], an [encoder] and a [representation]: recipe.py)
    result = fit_model(
        model=model, losses=losses, train=train.tensors(), val=val.tensors() if len(val.clips) else None,
        params=recipe.train, run_dir=run_dir, seed=recipe.run.seed, device=device,
        representation=representation, meta=meta, console=console,
    )
    info = {"best_epoch": result.best_epoch, "stopped_early": result.stopped_early, "epochs": len(result.history)}
    if not result.history:  # train.epochs = 0: the results would pass for a trained model's
        info["untrained"] = True
        console.print("warning: train.epochs = 0: the model is untrained; generate and evaluate use its initial "
                      "random weights and the report is marked UNTRAINED", markup=False, highlight=False, soft_wrap=True)
    best = next((e["val"] for e in result.history if e["epoch"] == result.best_epoch), None)
    if best:
        baseline = baseline_losses(losses, model, train.tensors(), val.tensors(), batch_size=recipe.train.batch_size)
        info.update(val=best, baseline_val=baseline)
        line = compare_line(best, baseline, result.best_epoch)
        if line:
            console.print(line, markup=False, highlight=False)
    return info


def evaluate(recipe: Recipe, ctx: EvalContext, run_dir: Path, console: Console) -> dict[str, Any]:
    """Compute every [[metric]] into metrics.json; info: the metrics' names."""
    metrics: dict[str, Any] = {}
    for spec in recipe.metric:
        metric = get_component("metric", spec.name).build(spec.params)
        started = time.perf_counter()
        values = metric.compute(ctx)
        metrics[spec.name] = {k: _number(v) for k, v in values.items()}
        console.print(f"{spec.name}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in values.items())
                      + f" [dim]({time.perf_counter() - started:.1f} s)[/dim]")
    write_json(run_dir / "metrics.json", metrics)
    return {"metrics": list(metrics)}


def report(run_dir: Path, console: Console) -> dict[str, Any]:
    """report.html and report.md from the run directory's files."""
    from avgen._core.report import collapse_warnings, read_json, write_report

    html, md = write_report(run_dir)
    warnings = collapse_warnings(run_dir, read_json(run_dir / "metrics.json") or {})
    for line in warnings:
        console.print(f"warning: the model looks collapsed: {line}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"report: {html}")
    return {"html": str(html), "md": str(md), **({"collapse_warnings": warnings} if warnings else {})}


def dataset_skipped_rows(dataset: Any) -> dict[str, list[str]]:
    """Annotation rows the dataset left out of each split (e.g. a hit time of inf)."""
    return {split: list(dataset.skipped_rows(split)) for split in SPLITS}


# ---------------------------------------------------------------- the run


@dataclass
class Run:
    """Executes a recipe's stages in a run directory."""

    recipe: Recipe
    run_dir: Path
    device: torch.device
    console: Console = field(default_factory=lambda: make_console(stderr=True))
    cache: FeatureCache = field(default_factory=FeatureCache)
    num_workers: int = 0
    strict: bool = False  # stop at the first unreadable clip instead of skipping it
    clip_entry_limit: int = 256 << 20  # bytes: a larger split keeps only its split entry once that is written
    threads: ThreadPlan | None = None  # the CLI's thread plan (avgen._core.threads), recorded in environment.json

    def __post_init__(self) -> None:
        self.recipe = self.recipe.with_absolute_paths()  # the run remembers where its data is, whatever the cwd later
        self.rank, self.world, _ = join_process_group(self.device)
        if self.rank != 0:
            self.console = make_console(stderr=True, quiet=True)
        self.dir = RunDir(self.run_dir)
        self._dataset: Any = None
        self._representation: Any = None
        self._encoder: Any = None
        self._featurizer: Featurizer | None = None
        self._splits: dict[str, SplitData] = {}
        self.stages: dict[str, Callable[[], dict[str, Any]]] = {  # the stage table: inputs -> stage -> info
            "prepare": lambda: prepare(self.dataset, self.recipe.data.name, self.run_dir, self.console,
                                       self._featurizer.skipped if self._featurizer is not None else {}),
            "featurize": self._featurize,
            "fit": self._fit,
            "generate": self._generate,
            "evaluate": lambda: evaluate(self.recipe, self.eval_context(), self.run_dir, self.console),
            "report": lambda: report(self.run_dir, self.console),
        }
        assert tuple(self.stages) == STAGES

    # ---- components (built on first use)

    @property
    def dataset(self) -> Any:
        if self._dataset is None:
            self._dataset = build_dataset(self.recipe)
        return self._dataset

    @property
    def representation(self) -> Any:
        if self._representation is None:
            self._representation = build_representation(self.recipe, self.device)
        return self._representation

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            self._encoder = build_encoder(self.recipe, self.device)
        return self._encoder

    @property
    def featurizer(self) -> Featurizer:
        if self._featurizer is None:
            self._featurizer = Featurizer(
                self.recipe, self.dataset, self.encoder, self.representation, self.device, self.console, self.cache,
                rank=self.rank, num_workers=self.num_workers, strict=self.strict, clip_entry_limit=self.clip_entry_limit,
                run_dir=self.run_dir,
            )
        return self._featurizer

    @property
    def sample_rate(self) -> int:
        return sample_rate(self.dataset, self.representation)

    def preflight(self) -> None:
        """Build every component, rehearse one training step and one index search (``avgen._core.build.rehearse``),
        so that plugin mistakes come before the run directory exists and any data is read."""
        rehearse(self.recipe, self.dataset, self.representation, lambda: (self.encoder, self.featurizer.sizes()),
                 self.device)

    def featurized(self, split: str) -> SplitData:
        """A split's tensors: kept from the featurize stage, else featurized now (from the cache when it ran before)."""
        if split not in self._splits:
            self._splits[split], _ = self.featurizer.featurize_split(split)
        return self._splits[split]

    # ---- driver

    def execute(self, only: str | None = None, fresh: bool = False, last: str | None = None) -> dict[str, Any]:
        """Run every stage not yet done (or just ``only``; or those up to ``last``); returns the ledger.

        Under ``torchrun`` every rank featurizes its shard and trains; rank 0 alone holds the
        lock, writes the run directory and runs prepare, generate, evaluate and report.
        """
        main = self.rank == 0
        with self.dir.lock() if main else contextlib.nullcontext(), run_log(self.run_dir / "log.txt", main):
            if main:
                self.dir.start(self.recipe.to_toml_dict(),
                               lambda: environment_record(self.recipe, self.device, self.threads), fresh)
            barrier(self.world)
            for stage in (STAGES[:STAGES.index(last) + 1] if last else STAGES) if only is None else (only,):
                if only is None and self.dir.done(stage):
                    self.console.print(f"[dim]{stage}: done earlier, skipped[/dim]")
                    continue
                if only is not None and main and stage != "report":
                    self.dir.forget_from(stage)
                started = time.perf_counter()
                self.console.rule(f"[bold]{stage}")
                log.info("stage %s started", stage)
                info = {}
                if main or stage in ("featurize", "fit"):
                    info = self.stages[stage]() or {}
                elif stage == "prepare":
                    barrier(self.world)  # rank 0 makes the data available first
                    self.dataset.prepare(None)
                if main and stage == "prepare":
                    barrier(self.world)
                seconds = time.perf_counter() - started
                if main:
                    self.dir.mark(stage, seconds, info)
                barrier(self.world)
                log.info("stage %s done in %.1f s %s", stage, seconds, json.dumps(info, default=str))
            return self.dir.ledger()

    # ---- the inputs of each stage

    def _featurize(self) -> dict[str, Any]:
        splits, stats = featurize(self.featurizer, self.run_dir, self.rank, self.world)
        self._splits.update(splits)
        return stats

    def build_generator(self) -> tuple[torch.nn.Module, GeneratorShape]:
        """The recipe's generator with its initial (seeded) weights, sized by the training split."""
        train = self.featurized("train")
        shape = generator_shape(train.features, train.rep, self.dataset.class_names)
        model = build_generator(self.recipe, shape, seed=self.recipe.run.seed)
        return model.to(self.device), shape

    def _fit(self) -> dict[str, Any]:
        from avgen._core.events import fit_detector

        kept = {"detector": fit_detector(self.recipe, self.dataset, self.run_dir, self.console, self.featurized)} \
            if self.recipe.detector is not None else {}
        if self.recipe.generator is None:
            self.console.print("no [generator] in the recipe: nothing to train", markup=False)
            return {"skipped": "no generator", **kept}
        train, val = self.featurized("train"), self.featurized("val")
        model, shape = self.build_generator()
        meta = checkpoint_meta(self.recipe.to_toml_dict(), self.dataset.class_names, shape, self.sample_rate,
                               self.dataset.clip_seconds)
        return {**fit(self.recipe, model, shape, train, val, self.representation, meta, self.run_dir, self.device,
                      self.console), **kept}

    def _generate(self) -> dict[str, Any]:
        if self.recipe.generator is None:
            self.console.print("no [generator] in the recipe: nothing to generate", markup=False)
            return {"skipped": "no generator"}
        from avgen._core.generate import generate_split
        test, train = self.featurized(self.recipe.eval.split), self.featurized("train")
        model, _ = self.build_generator()
        return generate_split(recipe=self.recipe, run_dir=self.run_dir, model=model, test=test, train=train,
                              representation=self.representation, class_names=self.dataset.class_names,
                              sample_rate=self.sample_rate, device=self.device, console=self.console)

    def eval_context(self) -> EvalContext:
        """What the metrics read: the evaluated split, the training split and the generated sound."""
        from avgen._core.generate import load_generated
        from avgen._core.retrieval import time_average

        test, train = self.featurized(self.recipe.eval.split), self.featurized("train")
        generated = load_generated(self.run_dir)
        return EvalContext(
            run_dir=self.run_dir, sample_rate=self.sample_rate, class_names=list(self.dataset.class_names),
            test_ids=[c.id for c in test.clips], test_labels=test.label, real_waves=test.wave, real_reps=test.rep,
            train_labels=train.label, train_waves=lambda: train.wave, train_bank=lambda: time_average(train.rep),
            predicted_reps=generated.get("rep"), generated={k: generated[k] for k in ("raw", "exemplar") if k in generated},
            predicted_labels=generated.get("predicted"), test_features=test.features,
            train_features=lambda: train.features, retrieved_by_class=generated.get("retrieved_by_class"),
            retrieved=generated.get("retrieved"), representation=self.representation, device=self.device,
            test_clips=list(test.clips), dataset=self.dataset,
            extra={"dataset_hash": cache_key(self.recipe.data.name, self.recipe.data.params, [c.id for c in train.clips]),
                   "dataset": self.recipe.data.name},
        )


def _number(v: Any) -> Any:
    """A metric value as metrics.json holds it: numbers as floats rounded to 6 decimals (docs/evaluation.md)."""
    if isinstance(v, torch.Tensor):
        v = v.item()
    return round(float(v), 6) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)
