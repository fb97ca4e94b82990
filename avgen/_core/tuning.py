"""An encoder tuned on the run's training split before its features are made (``Encoder.tune``), and read back
wherever the model is loaded (``Encoder.load_tuned``): the run and an exported model folder keep its weights as
``encoder.safetensors``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import torch

from avgen._core.components import TuneData
from avgen._core.errors import AvgenError

ENCODER_FILE = "encoder.safetensors"
TUNED_SPLITS = ("train", "val")


def tuned_identity(featurizer: Any) -> str | None:
    """The SHA-256 of the encoder's tuned weights, for the feature-cache key; None for an encoder that is not tuned.

    On first need in a run the encoder is tuned now (rank 0, which then writes ``encoder.safetensors`` into the
    run) or, where the run already has the file (a resumed run), reads it back."""
    encoder = featurizer.encoder
    if encoder is None or not encoder.tunes or encoder.tuned is not None:
        return None if encoder is None else encoder.tuned
    name = featurizer.recipe.encoder.name
    if featurizer.run_dir is None:
        raise AvgenError(f"encoder '{name}' is tuned on a run's training split: build it from its run or model folder, "
                         f"which keeps its {ENCODER_FILE}")
    path = Path(featurizer.run_dir) / ENCODER_FILE
    if path.is_file():
        encoder.load_tuned(path)
        return encoder.tuned
    if featurizer.rank != 0:
        raise AvgenError(f"encoder '{name}' is tuned in one process: run the featurize stage without torchrun first "
                         f"(`avgen run RECIPE --only featurize`), then train with it")
    from avgen._core.atomic import atomic_path
    from avgen._core.cache import cache_key
    from avgen._core.rundir import add_to_environment
    from avgen._core.train import derive_seed

    seed = derive_seed(featurizer.recipe.run.seed, "encoder", "tune")
    spec = featurizer.recipe.encoder  # the variants of a recipe that tune the same encoder on the same clips tune once
    key = cache_key("encoder-tune", spec.name, spec.params, featurizer.sizes()[1], seed,
                    {split: list(zip(featurizer.clip_keys_untuned(clips := featurizer.dataset.clips(split)),
                                     [c.label for c in clips])) for split in TUNED_SPLITS})
    cached, note = featurizer.cache.get(key), featurizer.cache.note(key)
    if cached is not None and note is not None:
        with atomic_path(path) as tmp:
            tmp.write_bytes(cached["file"].numpy().tobytes())  # the same bytes: the same SHA-256, the same features
        encoder.load_tuned(path)
        report = {**note, "from_cache": True}
        featurizer._stage_line(f"encoder: tuned as by an earlier run on the same clips (best epoch {note.get('best_epoch')}, "
                               f"validation accuracy {note.get('val_accuracy')}), from the feature cache")
    else:
        report = encoder.tune(tune_data(featurizer, seed), path)
        featurizer.cache.put(key, {"file": torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)})
        featurizer.cache.put_note(key, report)
    add_to_environment(featurizer.run_dir, {"encoder_tuning": report})
    return encoder.tuned


def tune_data(featurizer: Any, seed: int) -> TuneData:
    """The training and validation clips' frames (as the featurize stage reads them) and classes, for ``tune``."""
    from avgen._core.media import fit_frames

    dataset, encoder = featurizer.dataset, featurizer.encoder
    frames = featurizer.sizes()[1]
    splits = {split: [c for c in dataset.clips(split) if c.label >= 0] for split in TUNED_SPLITS}

    def clips(split: str) -> Iterator[tuple[torch.Tensor, int]]:
        for clip in splits[split]:
            try:
                read = dataset.load_frames(clip, encoder.fps, encoder.input_size)
            except (AvgenError, OSError):  # featurize names and skips unreadable clips; tuning just leaves them out
                continue
            if read.shape[0]:
                yield fit_frames(read, frames), clip.label  # as featurize fits them (fit_frame_count)

    return TuneData(clips, {split: len(found) for split, found in splits.items()}, len(dataset.class_names), seed,
                    say=lambda line: featurizer._stage_line(line))


def load_tuned_encoder(encoder: Any, folder: Path, name: str) -> None:
    """A loaded model's encoder with the tuned weights its run or model folder keeps (nothing for one not tuned)."""
    if not encoder.tunes:
        return
    path = Path(folder) / ENCODER_FILE
    if not path.is_file():
        raise AvgenError(f"{path}: missing; encoder '{name}' of this model was tuned in its run and needs that file "
                         "(copy it from the run directory, or export the run again)")
    encoder.load_tuned(path)
