"""The generate stage: raw sound (decode of s') and exemplar sound (paper Eq. 8) per test clip."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from avgen.atomic import atomic_path, write_json
from avgen.errors import AvgenError

if TYPE_CHECKING:
    from avgen.runner import Run

OUTPUTS = "generated/outputs.safetensors"


def predict(model: torch.nn.Module, features: torch.Tensor, device: torch.device, batch: int = 256) -> dict[str, torch.Tensor]:
    """Run a generator over features [N, frames, dim] in batches; outputs on the CPU."""
    model.eval()
    outs: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for i in range(0, features.shape[0], batch):
            for key, value in model(features[i:i + batch].to(device)).items():
                if isinstance(value, torch.Tensor):
                    outs.setdefault(key, []).append(value.float().cpu())
    return {k: torch.cat(v) for k, v in outs.items()}


def decode(representation: Any, reps: torch.Tensor, phase: str, length: int, device: torch.device,
           batch: int = 64) -> torch.Tensor:
    """Waveforms [N, length] from representations [N, D, F]."""
    waves = []
    with torch.no_grad():
        for i in range(0, reps.shape[0], batch):
            wave = representation.decode(reps[i:i + batch].to(device), phase=phase, length=length)
            waves.append(wave.float().cpu())
    return torch.cat(waves) if waves else torch.zeros(0, length)


def generate_split(run: "Run") -> dict[str, Any]:
    """Write raw and exemplar wavs, the index and the tensors the metrics read."""
    from avgen.media import write_wav
    from avgen.retrieval import time_average, topk_cosine
    from avgen.train import load_checkpoint

    split = run.recipe.eval.split
    test, train = run.split(split), run.split("train")
    ckpt = run.run_dir / "checkpoints" / "best.safetensors"
    if not ckpt.is_file():
        raise AvgenError(f"{ckpt}: no trained checkpoint; run the fit stage first (avgen run RECIPE --only fit)")
    model, _ = run.build_generator()
    state, _meta = load_checkpoint(ckpt)
    model.load_state_dict(state)
    outputs = predict(model, test.features, run.device)
    reps = outputs["rep"]
    length = test.wave.shape[-1]
    run.console.print(f"decoding {reps.shape[0]} clips ({run.recipe.eval.phase})")
    raw = decode(run.representation, reps, run.recipe.eval.phase, length, run.device)
    k = min(run.recipe.eval.top_k, len(train.clips))
    _, retrieved = topk_cosine(time_average(reps), time_average(train.rep), k)
    exemplar = train.wave[retrieved[:, 0]]
    predicted = outputs["probs"].argmax(-1) if "probs" in outputs else None

    out_dir = run.run_dir / "generated"
    tensors = {"rep": reps, "raw": raw, "exemplar": exemplar, "retrieved": retrieved}
    if predicted is not None:
        tensors["predicted"] = predicted
    with atomic_path(run.run_dir / OUTPUTS) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    names = run.dataset.class_names
    examples = [c.id for c in test.clips[: run.recipe.eval.examples]]
    clips = []
    for i, clip in enumerate(test.clips):
        raw_path, ex_path = f"generated/raw/{clip.id}.wav", f"generated/exemplar/{clip.id}.wav"
        write_wav(run.run_dir / raw_path, raw[i], run.sample_rate)
        write_wav(run.run_dir / ex_path, exemplar[i], run.sample_rate)
        if clip.id in examples:
            write_wav(run.run_dir / f"generated/real/{clip.id}.wav", test.wave[i], run.sample_rate)
        clips.append({
            "id": clip.id, "label": clip.label, "class": names[clip.label] if clip.label >= 0 else None,
            "predicted": int(predicted[i]) if predicted is not None else None,
            "exemplar_id": train.clips[int(retrieved[i, 0])].id,
            "retrieved": [train.clips[int(j)].id for j in retrieved[i]],
            "raw": raw_path, "exemplar": ex_path,
        })
    write_json(out_dir / "index.json", {"clips": clips, "examples": examples, "sample_rate": run.sample_rate})
    return {"clips": len(clips)}


def load_generated(run_dir: Path) -> dict[str, torch.Tensor]:
    """The generate stage's tensors, or {} when the run has no generator."""
    path = Path(run_dir) / OUTPUTS
    return load_file(str(path)) if path.is_file() else {}
