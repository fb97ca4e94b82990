"""``tune = "last_stage"``: EfficientNet-Lite0's last stage fine-tuned on the run's classes before its features are made.

The frozen network's activations at the input of its last stage (``blocks[6]``, 192 x 7 x 7 at 224 px) are computed
once for the training and validation clips; the last stage (``blocks[6]``, ``conv_head``, ``bn2``: 1.0 M weights,
from ImageNet, batch norms kept in inference mode so only their scale and shift learn) and a linear class head are
then trained with cross-entropy on the clip's class, the clip's probability being the mean of its frames'
(as CAN pools its LSTM's, Eq. 4 of the POCAN paper), Adam, batch 32 clips, and the epoch with the best validation
accuracy is kept (ties: the lower validation loss). The head is dropped: the encoder's features are the tuned
network's pooled 1280 values, and the generator learns from them as from frozen ones. A frozen per-frame average
of ImageNet features cannot single out what tells materials apart; on the hard synthetic preset this raised the
class accuracy from video by about 0.09 on held-out clips (docs/reproduction.md).
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from avgen import AvgenError, TuneData, atomic_path

from avgen_vision.efficientnet_lite import sha256_of

LAST_STAGE = ("blocks.6", "conv_head", "bn2")
HEAD_LR = 1e-3
BATCH_CLIPS = 32
TRUNK_BATCH = 32  # frames per pass of the frozen trunk


def trunk(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Normalised frames [B, 3, S, S] -> the activations entering the last stage [B, 192, S/32, S/32]."""
    return model.blocks[:6](F.relu6(model.bn1(model.conv_stem(x))))


def last_stage(model: nn.Module, a: torch.Tensor) -> torch.Tensor:
    """Activations entering the last stage -> the pooled features [B, 1280] (the encoder's output)."""
    return F.relu6(model.bn2(model.conv_head(model.blocks[6](a)))).mean((2, 3))


class LastStageTuner:
    """What a ``FrameEncoder`` with ``tune = "last_stage"`` delegates ``tune`` and ``load_tuned`` to."""

    def __init__(self, build: Callable[[], nn.Module], epochs: int, lr: float, max_clips: int) -> None:
        self.build = build  # the encoder's network with its weights, batch norms not folded
        self.epochs, self.lr, self.max_clips = epochs, lr, max_clips

    def load(self, encoder: Any, path: Path) -> None:
        model = self.build()
        try:
            model.load_state_dict(load_file(str(path)))
        except Exception as exc:  # noqa: BLE001 - a damaged or foreign file: one line naming it
            raise AvgenError(f"{path}: not the tuned weights of this encoder ({' '.join(str(exc).split())[:200]})") from exc
        encoder.use_network(model)
        encoder.tuned = sha256_of(Path(path))

    def tune(self, encoder: Any, data: TuneData, path: Path) -> dict[str, Any]:
        started = time.perf_counter()
        model = self.build().eval()
        stride = {"train": max(1, math.ceil(data.counts["train"] / self.max_clips)), "val": 1}
        acts = {split: activations(model, encoder, data, split, stride[split]) for split in ("train", "val")}
        if len(acts["train"][1]) == 0:
            raise AvgenError("encoder tuning: no readable training clip with a class")
        data.say(f"encoder tuning: the last stage of {len(acts['train'][1])} training and {len(acts['val'][1])} "
                 f"validation clips' frames ({time.perf_counter() - started:.0f} s for the frozen part)")
        report = train_last_stage(model, acts, data, self.epochs, self.lr)
        report.update(seconds=round(time.perf_counter() - started, 1), train_every=stride["train"])
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file(state, str(tmp), metadata={"tuned": json.dumps(report)})
        encoder.use_network(model)
        encoder.tuned = sha256_of(Path(path))
        return report


def activations(model: nn.Module, encoder: Any, data: TuneData, split: str, every: int,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(activations entering the last stage [clips, frames, C, h, w], classes [clips]) of every ``every``-th clip."""
    pending: list[torch.Tensor] = []
    out: list[torch.Tensor] = []
    labels: list[int] = []

    def flush() -> None:
        if pending:
            frames = torch.cat(pending)
            with torch.no_grad():
                a = torch.cat([trunk(model, encoder.preprocess(frames[i:i + TRUNK_BATCH])).float().cpu()
                               for i in range(0, len(frames), TRUNK_BATCH)])
            per = len(frames) // len(pending)
            out.append(a.contiguous().view(len(pending), per, *a.shape[1:]))
            pending.clear()

    total = data.counts.get(split, 0)
    report_at = max(1, total // 4)
    for i, (frames, label) in enumerate(data.clips(split)):
        if i and i % report_at == 0:  # a line every quarter: the frozen part of a large split takes minutes
            data.say(f"encoder tuning: {split} clips {i}/{total} through the frozen part")
        if i % every:
            continue
        pending.append(frames)
        labels.append(label)
        if len(pending) * frames.shape[0] >= TRUNK_BATCH:
            flush()
    flush()
    if not out:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long)
    return torch.cat(out), torch.tensor(labels, dtype=torch.long)


def train_last_stage(model: nn.Module, acts: dict[str, tuple[torch.Tensor, torch.Tensor]], data: TuneData,
                     epochs: int, lr: float) -> dict[str, Any]:
    """Train the last stage (and a linear head) in place; keep the epoch with the best validation accuracy."""
    device = next(model.parameters()).device
    stage = [p for name, p in model.named_parameters() if name.startswith(LAST_STAGE)]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in stage:
        p.requires_grad_(True)
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        torch.manual_seed(data.seed)
        head = nn.Linear(model.num_features, max(1, data.num_classes)).to(device)
    optimizer = torch.optim.Adam([{"params": stage, "lr": lr}, {"params": head.parameters(), "lr": HEAD_LR}])
    order = torch.Generator().manual_seed(data.seed)
    x_train, y_train = acts["train"]
    has_val = len(acts["val"][1]) > 0
    best: dict[str, Any] | None = None
    for epoch in range(1, epochs + 1):
        model.eval()  # batch norms keep their ImageNet statistics; their scale and shift train
        perm = torch.randperm(len(y_train), generator=order)
        total = 0.0
        for start in range(0, len(perm), BATCH_CLIPS):
            idx = perm[start:start + BATCH_CLIPS]
            loss = F.nll_loss(clip_log_probs(model, head, x_train[idx].to(device)), y_train[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        accuracy, val_loss = evaluate(model, head, *acts["val"]) if has_val else (float("nan"), total / len(perm))
        improved = best is None or not has_val or (accuracy, -val_loss) > (best["val_accuracy"], -best["val_loss"])
        if improved:
            best = {"epoch": epoch, "val_accuracy": accuracy, "val_loss": val_loss,
                    "state": copy.deepcopy({k: v for k, v in model.state_dict().items() if k.startswith(LAST_STAGE)})}
        data.say(f"encoder tuning epoch {epoch}/{epochs}: train loss {total / len(perm):.4f}"
                 + (f", val accuracy {accuracy:.3f}, val loss {val_loss:.4f}" if has_val else "") + ("  *" if improved else ""))
    assert best is not None
    model.load_state_dict(best.pop("state"), strict=False)
    for p in stage:
        p.requires_grad_(False)
    return {"tuned": "last_stage", "modules": list(LAST_STAGE), "parameters": sum(p.numel() for p in stage),
            "train_clips": len(y_train), "val_clips": len(acts["val"][1]), "epochs": epochs, "lr": lr,
            "best_epoch": best["epoch"], "val_accuracy": None if not has_val else round(best["val_accuracy"], 4),
            "val_loss": round(best["val_loss"], 4), "chosen_on": "validation accuracy" if has_val else "last epoch"}


def clip_log_probs(model: nn.Module, head: nn.Module, a: torch.Tensor) -> torch.Tensor:
    """Activations [B, T, C, h, w] -> log of each clip's mean per-frame class probability [B, K]."""
    b, t = a.shape[:2]
    per_frame = F.log_softmax(head(last_stage(model, a.flatten(0, 1))), -1).view(b, t, -1)
    return torch.logsumexp(per_frame, 1) - math.log(t)


def evaluate(model: nn.Module, head: nn.Module, acts: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(accuracy, mean loss) over clips."""
    device = next(model.parameters()).device
    correct, loss = 0, 0.0
    with torch.no_grad():
        for start in range(0, len(labels), 64):
            lp = clip_log_probs(model, head, acts[start:start + 64].to(device))
            y = labels[start:start + 64].to(device)
            loss += float(F.nll_loss(lp, y, reduction="sum"))
            correct += int((lp.argmax(1) == y).sum())
    return correct / len(labels), loss / len(labels)
