"""The fit stage: a model-agnostic training loop with checkpoints, resume, a NaN stop and DDP.

Each epoch's shuffle order and dropout randomness come from (seed, epoch), and the optimiser
state is checkpointed, so a resumed run ends with the same weights as an uninterrupted one.
Under ``torchrun`` every rank takes its slice of the same global batch; only rank 0 writes.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn

from avgen._core import atomic
from avgen._core.checkpoint import resume_checkpoint, save_checkpoint
from avgen._core.distributed import join_process_group
from avgen._core.errors import AvgenError
from avgen._core.recipe import TrainParams
from avgen._core.trainlog import (as_terms, balance_line, epoch_line, format_terms, nan_message, plot_if_main,
                                   stderr_console, plot_loss_balance, plot_loss_curve)

log = logging.getLogger("avgen.train")


@dataclass
class WeightedLoss:
    """One term of the objective: total = sum of weight * fn(outputs, batch)."""

    name: str
    weight: float
    fn: Any  # fn(outputs, batch) -> scalar tensor, a mean over the batch; fn.needs_wave


@dataclass
class FitResult:
    """Where the checkpoints are and how training went."""

    best_path: Path
    last_path: Path
    history: list[dict]
    best_epoch: int
    stopped_early: bool


def fit(
    *,
    model: nn.Module,
    losses: list[WeightedLoss],
    train: dict[str, Tensor],
    val: dict[str, Tensor] | None,
    params: TrainParams,
    run_dir: Path,
    seed: int,
    device: torch.device,
    representation: Any = None,
    meta: dict | None = None,
    console: Any = None,
    on_epoch_end: Callable[[int, dict], None] | None = None,
) -> FitResult:
    """Train ``model`` on ``train`` (resuming from run_dir/checkpoints/last.* when present)."""
    losses, needs_wave = check_objective(losses, params, representation)
    size = _check_split(train, "train", needs_wave)
    if val is not None:
        _check_split(val, "val", needs_wave)
    rank, world, device = join_process_group(device)
    ckpt_dir = Path(run_dir) / "checkpoints"
    last_path, best_path = ckpt_dir / "last.safetensors", ckpt_dir / "best.safetensors"
    console = console if console is not None else stderr_console()

    model.to(device)
    model.prepare(train)
    if needs_wave:
        representation.to(device)
    optimizer = _make_optimizer(model, params)
    info = {"format": 1, "seed": seed, "train": params.model_dump(mode="json"), "meta": meta or {}}
    state = {"epoch": 0, "history": [], "best_value": None, "best_epoch": 0, "stale": 0, "stopped_early": False}
    resuming = last_path.exists()
    if world > 1:
        dist.barrier()  # every rank has decided whether to resume before rank 0 writes anything
    if resuming:
        state = resume_checkpoint(last_path, model, optimizer)
        console.print(f"resuming from {last_path} (epoch {state['epoch']})")
    elif rank == 0:  # epoch 0: the initial weights, so a NaN in epoch 1 still leaves a good checkpoint
        save_checkpoint(last_path, model, {**info, **state}, optimizer)
    trained: nn.Module = _TrainingForward(model)
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        trained = nn.parallel.DistributedDataParallel(trained, device_ids=ids, broadcast_buffers=False)

    use_amp = params.amp and device.type == "cuda"
    if params.amp and not use_amp:
        console.print("amp: mixed precision is only used on CUDA; training in float32")
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    step = _Step(trained, losses, params, representation, needs_wave, device, use_amp, amp_dtype)

    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from avgen._core.console import LoggedProgress  # also plain lines in log.txt (and without a terminal) every 30 s

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[terms]}"))
    with LoggedProgress(*columns, console=console, disable=rank != 0, end_lines=False) as progress:
        task = progress.add_task("train", total=None, terms="")
        for epoch in range(state["epoch"] + 1, params.epochs + 1):
            if state["stopped_early"]:
                break
            started = time.perf_counter()
            lr = learning_rate(params, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            torch.manual_seed(derive_seed(seed, epoch, "dropout", rank))
            order = torch.randperm(size, generator=torch.Generator().manual_seed(derive_seed(seed, epoch, "order")))
            batches = list(_batches(order, params.batch_size, rank, world))
            progress.reset(task, total=len(batches), description=f"epoch {epoch}/{params.epochs}", terms="")
            trained.train()
            sums, seen = torch.zeros(len(losses) + 1, dtype=torch.float64), 0
            grad_norms: list[float] | None = None
            for number, (local, global_size) in enumerate(batches, start=1):
                batch = _take(train, local, device)
                total, logged, values = step.forward(batch, share=len(local) / global_size, world=world)
                if not torch.isfinite(logged).all():
                    plot_if_main(rank, state["history"], run_dir)
                    raise AvgenError(nan_message(logged, losses, epoch, number, last_path, state["epoch"]))
                if number == 1 and (params.grad_norms or params.balance != "off"):  # on the same graph: no extra forward
                    grad_norms = term_grad_norms(values, losses, model, world)
                    if params.balance != "off":
                        step.scales = balance_scales(grad_norms, losses, params.balance_shares)
                if params.balance != "off":
                    total = step.weighted(values, share=len(local) / global_size, world=world)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(total).backward()
                if params.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                sums += logged.double().cpu() * global_size
                seen += global_size
                progress.update(task, advance=1, terms=format_terms(sums / seen, losses))
            train_terms = as_terms(sums / max(seen, 1), losses)
            val_terms = None
            if val is not None:
                val_terms = as_terms(_validate(step, model, val, params.batch_size, rank, world, device), losses)
                if not all(math.isfinite(v) for v in val_terms.values()):
                    raise AvgenError(f"validation loss became nan at epoch {epoch}; the last good checkpoint is kept at {last_path}")
            value = (val_terms or train_terms)[params.select]
            improved = state["best_value"] is None or value < state["best_value"]
            entry = {"epoch": epoch, "lr": lr, "train": train_terms, "val": val_terms, "best": improved,
                     "seconds": round(time.perf_counter() - started, 3)}
            if grad_norms is not None:
                entry["grad_norms"] = {loss.name: norm for loss, norm in zip(losses, grad_norms)}
            if params.balance != "off":
                entry["loss_scales"] = {loss.name: scale for loss, scale in zip(losses, step.scales)}
            state["history"].append(entry)
            state["epoch"] = epoch
            if improved:
                state.update(best_value=value, best_epoch=epoch, stale=0)
            else:
                state["stale"] += 1
            state["stopped_early"] = 0 < params.early_stopping <= state["stale"]
            if rank == 0:
                if improved:
                    save_checkpoint(best_path, model, {**info, **state})
                save_checkpoint(last_path, model, {**info, **state}, optimizer)
                atomic.write_json(Path(run_dir) / "history.json", state["history"])
                console.print(epoch_line(entry, params.epochs))
                log.info("%s", epoch_line(entry, params.epochs))
                if grad_norms is not None:
                    console.print(balance_line(entry), markup=False, highlight=False)
                    log.info("%s", balance_line(entry))
            if on_epoch_end is not None:
                on_epoch_end(epoch, entry)
    if rank == 0:
        if not best_path.exists():  # no epoch ran (epochs = 0): the initial weights are the best we have
            save_checkpoint(best_path, model, {**info, **state})
        atomic.write_json(Path(run_dir) / "history.json", state["history"])
        plot_loss_curve(state["history"], Path(run_dir) / "figures" / "loss_curve.png")
        plot_loss_balance(state["history"], losses, Path(run_dir) / "figures" / "loss_balance.png")
        if state["stopped_early"]:
            console.print(f"early stopping: no improvement for {params.early_stopping} epochs")
    if world > 1:
        dist.barrier()
    return FitResult(best_path, last_path, state["history"], state["best_epoch"], state["stopped_early"])


def check_objective(losses: list[WeightedLoss], params: TrainParams, representation: Any) -> tuple[list[WeightedLoss], bool]:
    """(the losses with unique names, whether one needs s' decoded); [train] settings they contradict are an AvgenError."""
    losses = _unique_names(losses)
    needs_wave = any(loss.fn.needs_wave for loss in losses)
    if needs_wave and representation is None:
        raise AvgenError("fit: a loss needs the decoded waveform but no representation was given")
    if needs_wave and params.decode_phase not in representation.phases:
        raise AvgenError(f"train.decode_phase = {params.decode_phase!r}: the representation decodes with "
                         f"{', '.join(representation.phases)}")
    names = ", ".join(loss.name for loss in losses)
    unknown = sorted(set(params.balance_shares) - {loss.name for loss in losses})
    if unknown:
        raise AvgenError(f"train.balance_shares names {', '.join(unknown)}; the losses are {names}")
    if params.select not in ("total", *(loss.name for loss in losses)):
        raise AvgenError(f"train.select = {params.select!r}: give 'total' or a loss of the recipe ({names})")
    return losses, needs_wave


class _TrainingForward(nn.Module):
    """The generator's ``training_outputs(batch)`` as a forward, so that DDP wraps (and synchronises) that call."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return self.generator.training_outputs(batch)


class _Step:
    """One forward pass and the weighted loss terms of a batch."""

    def __init__(self, model, losses, params, representation, needs_wave, device, use_amp, amp_dtype) -> None:
        self.model, self.losses, self.params = model, losses, params
        self.representation, self.needs_wave = representation, needs_wave
        self.device, self.use_amp, self.amp_dtype = device, use_amp, amp_dtype
        self.scales = [1.0] * len(losses)  # train.balance: each term's factor on top of its weight

    def terms(self, outputs_of: Callable[[dict[str, Tensor]], Any], batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, list[Tensor]]:
        """(total, [total, term1, term2, ...] detached, [term1, term2, ...]) for this rank's examples;
        ``outputs_of(batch)`` runs the generator. The total uses the recipe's weights."""
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            outputs = dict(outputs_of(batch))
            if self.needs_wave:
                wave = batch["wave"]
                outputs["wave"] = self.representation.decode(
                    outputs["rep"].float(), phase=self.params.decode_phase, reference=wave, length=wave.shape[-1]
                )
            values = [loss.fn(outputs, batch).float().reshape(()) for loss in self.losses]
        total = sum(loss.weight * value for loss, value in zip(self.losses, values))
        return total, torch.stack([total, *values]).detach(), values

    def forward(self, batch: dict[str, Tensor], share: float, world: int) -> tuple[Tensor, Tensor, list[Tensor]]:
        """The loss to back-propagate (scaled so DDP's gradient mean is the global-batch mean), the logged terms
        and the terms themselves (with their graph)."""
        total, logged, values = self.terms(self.model, batch)
        logged = logged * share
        if world > 1:
            dist.all_reduce(logged)
        return total * (share * world), logged, values

    def weighted(self, values: list[Tensor], share: float, world: int) -> Tensor:
        """The loss to back-propagate with each term's balance factor (train.balance)."""
        total = sum(loss.weight * scale * value for loss, scale, value in zip(self.losses, self.scales, values))
        return total * (share * world)


def term_grad_norms(values: list[Tensor], losses: list[WeightedLoss], model: nn.Module, world: int) -> list[float]:
    """The L2 norm of each weighted term's gradient at the generator's trainable parameters.

    ``torch.autograd.grad`` on the batch's own graph (kept for the step's backward): it leaves
    ``.grad``, the RNG and the weights untouched. Under torchrun the ranks' norms are averaged.
    """
    parameters = [p for p in model.parameters() if p.requires_grad]
    norms = []
    for loss, value in zip(losses, values):
        if not value.requires_grad:  # a term that does not depend on the weights
            norms.append(0.0)
            continue
        grads = torch.autograd.grad(loss.weight * value, parameters, retain_graph=True, allow_unused=True)
        norms.append(math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads if g is not None)))
    if world > 1:
        reduced = torch.tensor(norms, dtype=torch.float64, device=values[0].device)
        dist.all_reduce(reduced)
        norms = (reduced / world).tolist()
    return norms


def balance_scales(norms: list[float], losses: list[WeightedLoss], shares: dict[str, float]) -> list[float]:
    """Factors that give each term's gradient norm its share of the summed norms (train.balance = 'grad_share').

    Term i with weighted gradient norm g_i gets factor s_i * sum_j g_j / g_i, s_i its normalised share, so
    the summed norm is unchanged; a term without gradient keeps factor 1.
    """
    raw = [shares.get(loss.name, 1.0) for loss in losses]
    active = [i for i, g in enumerate(norms) if g > 0 and math.isfinite(g)]
    total_share = sum(raw[i] for i in active)
    total_norm = sum(norms[i] for i in active)
    scales = [1.0] * len(losses)
    for i in active:
        scales[i] = raw[i] / total_share * total_norm / norms[i]
    return scales


@torch.no_grad()
def _validate(step: _Step, model: nn.Module, data: dict[str, Tensor], batch_size: int, rank: int, world: int, device: torch.device) -> Tensor:
    """Mean loss terms over the whole split; each rank evaluates a contiguous shard."""
    model.eval()
    shard = torch.tensor_split(torch.arange(len(data["features"])), world)[rank]
    sums = torch.zeros(len(step.losses) + 2, dtype=torch.float64, device=device)
    for start in range(0, len(shard), batch_size):
        index = shard[start : start + batch_size]
        _, logged, _ = step.terms(model.training_outputs, _take(data, index, device))  # in eval mode
        sums[:-1] += logged.double() * len(index)
        sums[-1] += len(index)
    if world > 1:
        dist.all_reduce(sums)
    return (sums[:-1] / sums[-1].clamp_min(1)).cpu()


# ---------------------------------------------------------------- schedule, order, data


def learning_rate(params: TrainParams, epoch: int) -> float:
    """The learning rate of a 1-based epoch under the recipe's schedule."""
    if params.schedule == "cosine":
        return params.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / max(params.epochs, 1)))
    if params.schedule == "step":
        return params.lr * params.gamma ** ((epoch - 1) // params.step_size)
    return params.lr


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any parts, e.g. (seed, epoch, 'order'); the same parts give the same seed."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _batches(order: Tensor, batch_size: int, rank: int, world: int) -> Iterator[tuple[Tensor, int]]:
    """(this rank's indices, global batch size) for each global batch of the epoch's order."""
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        if len(batch) < world:  # too few to give every rank an example (DDP only): dropped
            return
        yield torch.tensor_split(batch, world)[rank], len(batch)


def _take(data: dict[str, Tensor], index: Tensor, device: torch.device) -> dict[str, Tensor]:
    """The rows ``index`` of every tensor, on ``device``, floats as float32."""
    out = {}
    for key, value in data.items():
        rows = value[index]
        out[key] = rows.to(device, torch.float32 if rows.is_floating_point() else rows.dtype, non_blocking=True)
    return out


def _check_split(data: dict[str, Tensor], name: str, needs_wave: bool) -> int:
    required = ["features", "rep", "label"] + (["wave"] if needs_wave else [])
    missing = [key for key in required if key not in data]
    if missing:
        raise AvgenError(f"fit: the {name} split lacks {', '.join(missing)}; it needs {', '.join(required)}")
    sizes = {key: len(value) for key, value in data.items()}
    if len(set(sizes.values())) != 1:
        raise AvgenError(f"fit: the {name} split's tensors differ in length: {sizes}")
    if sizes["features"] == 0:
        raise AvgenError(f"fit: the {name} split is empty; check the dataset's {name} clips")
    return sizes["features"]


def _unique_names(losses: list[WeightedLoss]) -> list[WeightedLoss]:
    if not losses:
        raise AvgenError('fit: the recipe has no [[loss]]; add one, e.g. [[loss]] name = "spec_smooth_l1"')
    seen: dict[str, int] = {}
    out = []
    for loss in losses:
        seen[loss.name] = seen.get(loss.name, 0) + 1
        name = loss.name if seen[loss.name] == 1 else f"{loss.name}.{seen[loss.name]}"
        out.append(WeightedLoss(name, float(loss.weight), loss.fn))
    return out


def _make_optimizer(model: nn.Module, params: TrainParams) -> torch.optim.Optimizer:
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise AvgenError("fit: the generator has no trainable parameters")
    if params.optimizer == "adamw":
        return torch.optim.AdamW(trainable, lr=params.lr, weight_decay=params.weight_decay)
    if params.optimizer == "sgd":
        return torch.optim.SGD(trainable, lr=params.lr, momentum=0.9, weight_decay=params.weight_decay)
    return torch.optim.Adam(trainable, lr=params.lr, weight_decay=params.weight_decay)


# ---------------------------------------------------------------- reporting


