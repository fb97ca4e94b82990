"""The model folder ``avgen export`` writes, in the Hugging Face model-repository layout, and its reader.

```
config.json            what generation needs: the resolved recipe, class names, generator shape, rates
model.safetensors      the generator's weights (base samples included), plain tensors
exemplars.safetensors  optional: exemplar keys [M, D] float32, audio [M, T] int16, provenance per row
README.md              the model card (YAML metadata for the Hub, then text)
recipe.toml, metrics.json   the run's resolved recipe and metrics, for people
SHA256SUMS             SHA-256 of every other file (`sha256sum -c SHA256SUMS` checks it too)
```

Nothing here touches the network; ``huggingface_hub``'s ``upload_folder`` uploads the folder as it is.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

import avgen

FORMAT = "avgen-model/1"  # config.json's "format"
CONFIG, WEIGHTS, EXEMPLARS, CARD, SUMS = "config.json", "model.safetensors", "exemplars.safetensors", "README.md", "SHA256SUMS"
REQUIRED = (CONFIG, WEIGHTS, CARD)
PCM_SCALE = 32767.0  # exemplar audio is stored as int16 PCM


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_sums(folder: Path, names: list[str]) -> None:
    """SHA256SUMS in the format of coreutils' sha256sum: '<hex>  <name>' per line."""
    lines = [f"{sha256_file(folder / name)}  {name}\n" for name in sorted(names)]
    avgen.write_text(folder / SUMS, "".join(lines))


def read_sums(folder: Path) -> dict[str, str]:
    """name -> SHA-256 from SHA256SUMS; a missing or malformed file is one AvgenError."""
    path = folder / SUMS
    if not path.is_file():
        raise avgen.AvgenError(f"{folder}: incomplete model folder, {SUMS} is missing; export it again with "
                               "`avgen export RUN_DIR OUT_DIR`")
    sums: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        parts = line.split("  ", 1)
        if len(parts) != 2 or len(parts[0]) != 64 or "/" in parts[1] or parts[1].startswith("."):
            raise avgen.AvgenError(f"{path}: line {number} is not '<sha256>  <file name>'; the folder was altered")
        sums[parts[1]] = parts[0]
    return sums


def verify(folder: Path) -> dict[str, str]:
    """Check every file SHA256SUMS lists (and that the required ones are listed); the listed names."""
    sums = read_sums(folder)
    for name in REQUIRED:
        if name not in sums:
            raise avgen.AvgenError(f"{folder}: {SUMS} does not list {name}; the folder was altered, export it again")
    for name, expected in sorted(sums.items()):
        path = folder / name
        if not path.is_file():
            raise avgen.AvgenError(f"{folder}: incomplete model folder, {name} is missing; copy the whole folder")
        if sha256_file(path) != expected:
            raise avgen.AvgenError(f"{path}: SHA-256 differs from {SUMS}; the file was changed or damaged, "
                                   "not loaded (copy the folder again)")
    return sums


def is_model_folder(folder: Path) -> bool:
    """Whether ``folder`` claims to be an exported model (so a damaged one gets this plugin's errors)."""
    if (folder / SUMS).is_file():
        return True
    try:
        return json.loads((folder / CONFIG).read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_model_folder(folder: Path) -> Any:
    """The folder as an ``avgen.SavedModel``, after checking every file's SHA-256."""
    sums = verify(folder)
    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise avgen.AvgenError(f"{folder / CONFIG}: not JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise avgen.AvgenError(f"{folder / CONFIG}: format {config.get('format') if isinstance(config, dict) else None!r}, "
                               f"this avgen reads {FORMAT!r}")
    check_installed(folder, config.get("components"))
    meta = {key: config.get(key) for key in ("recipe", "class_names", "shape", "sample_rate", "clip_seconds")}
    weights = _load(folder / WEIGHTS)
    bank = None
    if config.get("exemplars"):
        if EXEMPLARS not in sums:
            raise avgen.AvgenError(f"{folder}: config.json names {EXEMPLARS} but {SUMS} does not list it; export it again")
        bank = read_bank(folder / EXEMPLARS, f"exemplar sounds exported with {folder}")
    return avgen.SavedModel(weights=weights, meta=meta, bank=bank)


def write_bank(path: Path, bank: Any) -> int:
    """An exemplar bank as one safetensors file: keys float32, audio int16, entries in the metadata; its size."""
    waves = bank.waves.float()
    peak = float(waves.abs().max()) if waves.numel() else 0.0
    scale = max(peak, 1e-9) if peak > 1.0 else 1.0  # keep the int16 audio in range
    pcm = torch.round(waves / scale * PCM_SCALE).clamp(-32768, 32767).to(torch.int16)
    tensors = {"reps": bank.reps.float().contiguous(), "pcm": pcm.contiguous()}
    data = safetensors_bytes(tensors, metadata={"entries": json.dumps(bank.entries), "scale": repr(scale)})
    with avgen.atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return len(data)


def read_bank(path: Path, source: str) -> Any:
    from safetensors import safe_open

    tensors = _load(path)
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata() or {}
    try:
        entries = json.loads(metadata["entries"])
        scale = float(metadata.get("scale", "1.0"))
        reps, pcm = tensors["reps"], tensors["pcm"]
    except (KeyError, ValueError) as exc:
        raise avgen.AvgenError(f"{path}: not an avgen exemplar file ({exc})") from None
    if len(entries) != reps.shape[0] or pcm.shape[0] != reps.shape[0]:
        raise avgen.AvgenError(f"{path}: {reps.shape[0]} keys, {pcm.shape[0]} clips and {len(entries)} entries differ")
    waves = pcm.float() * (scale / PCM_SCALE)
    return avgen.ExemplarBank(reps=reps, waves=waves, entries=entries, source=source)


def _load(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise avgen.AvgenError(f"{path}: not a readable safetensors file ({exc})") from None


def check_installed(folder: Path, components: Any) -> None:
    """Every component the folder's config.json records is registered here; else one line: why its plugin failed
    to load when that plugin (or another of its distribution) is installed but broken, otherwise the ``pip install``
    that brings it (folders exported before components were recorded are not checked)."""
    if not isinstance(components, dict):
        return
    for section, source in components.items():
        if not isinstance(source, dict) or not isinstance(source.get("name"), str):
            continue
        try:
            avgen.get_component(section, source["name"])
        except avgen.UnknownComponentError:
            dist, version = source.get("distribution", "?"), source.get("version", "?")
            broken = [p for p in avgen.broken_plugins()
                      if p.name == source.get("plugin") or _project(p.distribution) == _project(dist)]
            if broken:
                raise avgen.AvgenError(
                    f"--model {folder}: {'; '.join(p.failure for p in broken)} (its {section} '{source['name']}' "
                    f"comes from the plugin '{source.get('plugin', '?')}' of {dist} {version})"
                ) from None
            raise avgen.AvgenError(
                f"--model {folder}: its {section} '{source['name']}' comes from the plugin '{source.get('plugin', '?')}' "
                f"of the distribution {dist} {version}, which is not installed here: pip install '{dist}=={version}'"
            ) from None


def _project(name: Any) -> str:
    """A distribution name as pip compares them: 'Avgen_GRU' and 'avgen-gru' are one project."""
    return re.sub(r"[-_.]+", "-", str(name)).lower()
