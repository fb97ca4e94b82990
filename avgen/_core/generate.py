"""The generate stage: raw sound (decode of s') and exemplar sound (paper Eq. 8) per test clip."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from avgen._core.atomic import atomic_path, write_json
from avgen._core.build import raw_phase
from avgen._core.errors import AvgenError

if TYPE_CHECKING:
    from avgen._core.splits import SplitData
    from avgen._core.recipe import Recipe
OUTPUTS = "generated/outputs.safetensors"


def predict(model: torch.nn.Module, features: torch.Tensor, device: torch.device, batch: int = 256,
            labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Run a generator over features [N, frames, dim] in batches; outputs on the CPU.

    With ``labels`` [N] the class is forced (``Generator.class_outputs``), as ``--material`` asks.
    """
    model.eval()
    outs: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for i in range(0, features.shape[0], batch):
            chunk = features[i:i + batch].to(device)
            result = model(chunk) if labels is None else model.class_outputs(chunk, labels[i:i + batch].to(device))
            for key, value in result.items():
                if isinstance(value, torch.Tensor):
                    outs.setdefault(key, []).append(value.float().cpu())
    return {k: torch.cat(v) for k, v in outs.items()}


def decode(representation: Any, reps: torch.Tensor, phase: str, length: int, device: torch.device,
           batch: int = 64, reference: torch.Tensor | None = None) -> torch.Tensor:
    """Waveforms [N, length] from representations [N, D, F]; ``reference`` [N, T'] is passed on to
    ``Representation.decode`` (the sound so far, for a representation that ``continues_phase``)."""
    waves = []
    with torch.no_grad():
        for i in range(0, reps.shape[0], batch):
            extra = {} if reference is None else {"reference": reference[i:i + batch].to(device)}
            wave = representation.decode(reps[i:i + batch].to(device), phase=phase, length=length, **extra)
            waves.append(wave.float().cpu())
    return torch.cat(waves) if waves else torch.zeros(0, length)


def generate_split(*, recipe: "Recipe", run_dir: Path, model: torch.nn.Module, test: "SplitData", train: "SplitData",
                   representation: Any, class_names: list[str], sample_rate: int, device: torch.device,
                   console: Any) -> dict[str, Any]:
    """Load the best checkpoint into ``model``; write raw and exemplar wavs, the index and the tensors the metrics read."""
    from avgen._core.checkpoint import load_checkpoint
    from avgen._core.loading import library_bank
    from avgen._core.sound import write_wav
    from avgen._core.retrieval import build_index, search, time_average

    ckpt = run_dir / "checkpoints" / "best.safetensors"
    if not ckpt.is_file():
        raise AvgenError(f"{ckpt}: no trained checkpoint; run the fit stage first (avgen run RECIPE --only fit)")
    state, _meta = load_checkpoint(ckpt)
    model.load_state_dict(state)
    outputs = predict(model, test.features, device)
    reps = outputs["rep"]
    length = test.wave.shape[-1]
    phase = raw_phase(recipe, representation)
    console.print(f"decoding {reps.shape[0]} clips ({phase})")
    raw = decode(representation, reps, phase, length, device)
    k = min(recipe.eval.top_k, len(train.clips))
    queries, keys = time_average(reps), time_average(train.rep)  # Eq. 8's query and bank keys
    _, retrieved = search(build_index(recipe.index, keys), queries, k)
    probabilities = model.class_probabilities(outputs)
    predicted = probabilities.argmax(-1) if probabilities is not None else None
    by_class = None
    if predicted is not None:  # the class head's knowledge at retrieval: its class's clips first, each ranked by s'
        by_class = class_first(recipe.index, keys, train.label, queries, predicted, retrieved)
    elif recipe.eval.exemplar == "predicted_class":  # e.g. owens_lstm beside CAN in one comparison
        console.print(f"eval.exemplar = predicted_class: {recipe.generator.name} predicts no class; "
                      "its exemplars are Eq. 8's", markup=False, highlight=False)
    chosen = by_class if recipe.eval.exemplar == "predicted_class" and by_class is not None else retrieved
    exemplar, from_library = train.wave[chosen[:, 0]], None
    if recipe.eval.library is not None:  # exemplar sounds from the user's library; R@K keeps the training clips
        spec = recipe.representation
        bank = library_bank(recipe.eval.library, representation, {"name": spec.name, **spec.params},
                            length / sample_rate, console)
        scores, nearest = search(build_index(recipe.index, bank.reps), queries, 1)
        exemplar = bank.waves[nearest[:, 0]].float()
        from_library = [{**bank.entries[int(j)], "similarity": round(float(v), 6)} for j, v in zip(nearest[:, 0], scores[:, 0])]

    out_dir = run_dir / "generated"
    tensors = {"rep": reps, "raw": raw, "exemplar": exemplar, "retrieved": retrieved}
    if predicted is not None:
        tensors.update(predicted=predicted, retrieved_by_class=by_class)
    with atomic_path(run_dir / OUTPUTS) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    names = class_names
    from avgen._core.report import pick_examples

    examples = [c.id for c in pick_examples(test.clips, recipe.eval.examples)]  # spread over classes and videos
    clips = []
    for i, clip in enumerate(test.clips):
        raw_path, ex_path = f"generated/raw/{clip.id}.wav", f"generated/exemplar/{clip.id}.wav"
        write_wav(run_dir / raw_path, raw[i], sample_rate)
        write_wav(run_dir / ex_path, exemplar[i], sample_rate)
        if clip.id in examples:
            write_wav(run_dir / f"generated/real/{clip.id}.wav", test.wave[i], sample_rate)
        clips.append({
            "id": clip.id, "label": clip.label, "class": names[clip.label] if clip.label >= 0 else None,
            "predicted": int(predicted[i]) if predicted is not None else None,
            "exemplar_id": train.clips[int(chosen[i, 0])].id if from_library is None else None,
            **({"exemplar_library": from_library[i]} if from_library is not None else {}),
            "retrieved": [train.clips[int(j)].id for j in retrieved[i] if j >= 0],  # -1: an approximate index's empty slot
            "raw": raw_path, "exemplar": ex_path,
        })
    write_json(out_dir / "index.json", {"clips": clips, "examples": examples, "sample_rate": sample_rate})
    return {"clips": len(clips)}


def class_first(index_spec: Any, bank: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor,
                predicted: torch.Tensor, retrieved: torch.Tensor) -> torch.Tensor:
    """Per query, the training clips of its predicted class ranked by the recipe's index (nearest s' first), then
    the Eq. 8 retrieval's other clips in their order: long [N, K] with K = ``retrieved``'s."""
    from avgen._core.retrieval import build_index, search

    k = retrieved.shape[1]
    out = retrieved.clone()
    for c in predicted.unique().tolist():
        rows, who = torch.nonzero(labels == c)[:, 0], torch.nonzero(predicted == c)[:, 0]
        if rows.numel() == 0:
            continue  # no training clip of that class: Eq. 8's order stands
        _, near = search(build_index(index_spec, bank[rows]), queries[who], min(k, rows.numel()))
        for q, slots in zip(who.tolist(), near.tolist()):
            found = [int(rows[j]) for j in slots if j >= 0]  # -1: an approximate index's empty slot
            rest = [j for j in retrieved[q].tolist() if j not in found]
            out[q] = torch.tensor((found + rest)[:k])
    return out


def load_generated(run_dir: Path) -> dict[str, torch.Tensor]:
    """The generate stage's tensors, or {} when the run has no generator."""
    path = Path(run_dir) / OUTPUTS
    if not path.is_file():
        return {}
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise AvgenError(f"{path}: unreadable ({exc}); rerun the generate stage: avgen run RECIPE --only generate") from exc
