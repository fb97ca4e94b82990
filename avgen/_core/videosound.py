"""The sound of a whole video: windows of frame features, generated and overlap-added, streamed to a file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import torch

from avgen._core.build import raw_phase
from avgen._core.errors import AvgenError
from avgen._core.featurize import frames_per_clip
from avgen._core.generate import decode, predict
from avgen._core.loading import clip_seconds
from avgen._core.media import fit_frames
from avgen._core.overlap import OverlapAdd, SegmentDecoder

SEGMENT_SECONDS = 30.0  # long videos are generated this many seconds of windows at a time (flat memory)
DECODE_OVERLAP_SECONDS = 1.0  # ... and their representations decoded in segments that overlap by this much


def window_starts(duration: float, window: float, hop: float) -> list[float]:
    """Starts of windows of length ``window`` every ``hop`` seconds covering [0, duration]."""
    if duration <= window:
        return [0.0]
    count = int(torch.ceil(torch.tensor((duration - window) / hop)).item()) + 1
    return [i * hop for i in range(count)]


OUTPUT_TOLERANCE = 0.05  # generate's bf16 check: s' from bf16 frames within 5 % (relative L2, about 0.4 dB) of the fp32 one


def encoder_precision(meta: dict[str, Any], device: torch.device, check: Any = None, requested: str = "auto") -> str:
    """'bf16' where this device has native bf16 and either the run's features were made in bf16, or its
    featurize chose fp32 by itself (``requested``, the recipe's [featurize] precision, is "auto") and ``check()``
    (``output_check``) finds that bf16 frames give the generator the same output; else 'fp32'."""
    from avgen._core.precision import native_bf16

    if not native_bf16(device)[0]:
        return "fp32"
    if meta.get("featurize_precision") == "bf16":
        return "bf16"
    if check is None or requested != "auto":
        return "fp32"
    return "bf16" if check() else "fp32"


def frames_precision(meta: dict[str, Any], device: torch.device, encoder: Any, model: torch.nn.Module, video: Path,
                     frames: int, requested: str) -> tuple[str, dict[str, Any]]:
    """(how the frames of ``video`` are encoded, what the check measured): ``encoder_precision`` with
    ``output_check`` on the video's first window of ``frames`` frames."""
    found: dict[str, Any] = {}
    precision = encoder_precision(meta, device, lambda: output_check(encoder, model, video, frames, device, found),
                                  requested=requested)
    return precision, found


def output_check(encoder: Any, model: torch.nn.Module, video: Path, frames: int, device: torch.device,
                 found: dict[str, Any]) -> bool:
    """Whether the generator's output for the first window of ``video`` is the same from frames encoded in bf16
    as from fp32 ones: the same class (where it has a class head) and s' within OUTPUT_TOLERANCE. It judges
    what the sound depends on, on the video itself; ``found`` gets what it measured."""
    from avgen._core.media import FrameReader
    from avgen._core.precision import autocast_for

    with FrameReader(video, encoder.fps, encoder.input_size) as reader:
        first = reader.read(0, frames)
    with torch.no_grad():
        full = encoder.encode(first).float()
        with autocast_for("bf16", encoder.device):
            low = encoder.encode(first).float()
    outputs = [predict(model, fit_frames(f, frames)[None], device) for f in (full, low)]
    reps = [out["rep"].double() for out in outputs]
    difference = float((reps[1] - reps[0]).norm() / reps[0].norm().clamp_min(1e-12))
    probabilities = [model.class_probabilities(out) for out in outputs]
    same_class = probabilities[0] is None or bool((probabilities[0].argmax(-1) == probabilities[1].argmax(-1)).all())
    found.update(bf16_output_difference=round(difference, 6), bf16_same_class=same_class)
    return same_class and difference <= OUTPUT_TOLERANCE


def return_freed_memory(threshold: int = 1 << 20) -> bool:
    """Make glibc's malloc give large blocks (>= ``threshold`` bytes) back to the system when freed.

    glibc raises its mmap threshold each time a large block is freed, so later tensors of that size come
    from the heap, which fragments across segments and threads: the peak memory of a long video then
    crept up segment after segment (94 MB more at 3 min than at 30 s). A fixed threshold keeps it flat.
    Returns whether it applied (glibc only).
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, int(threshold)))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def video_features(encoder: Any, video: Path, duration: float, chunk_seconds: float = 2.0, first: int = 0,
                   count: int | None = None, reader: Any = None, precision: str = "fp32") -> torch.Tensor:
    """Encoder features [count, dim] of frames first .. first + count - 1 at the encoder's fps (frame k shows
    time k / fps), decoded ``chunk_seconds`` at a time; by default every frame of ``duration`` seconds.

    ``reader`` (an ``avgen._core.media.FrameReader`` at the encoder's fps and size) carries on decoding where the
    previous call stopped; without it one is opened for this call. ``precision`` 'bf16' encodes under
    bfloat16 autocast (as the run's featurize did, ``avgen._core.precision``). Decoding and encoding take turns:
    decoding the next chunk in a thread while the encoder ran was no faster on 2 cores (80 frames of 720p
    at 8 fps: 1.64 s against 1.60 s; FFmpeg's own frame threads already use both cores while decoding).
    """
    from avgen._core.media import FrameReader
    from avgen._core.precision import autocast_for

    if count is None:
        count = frames_per_clip(duration, encoder.fps)
    own = reader is None
    reader = FrameReader(video, encoder.fps, encoder.input_size) if own else reader
    per_read = frames_per_clip(chunk_seconds, encoder.fps)
    feats = []
    try:
        for done in range(0, count, per_read):
            frames = reader.read(first + done, min(per_read, count - done))
            with autocast_for(precision, encoder.device):
                feats.append(encoder.encode(frames).float())
    finally:
        if own:
            reader.close()
    return torch.cat(feats)


def generate_for_video(video: Path, recipe: Any, encoder: Any, representation: Any, model: torch.nn.Module,
                       meta: dict[str, Any], device: torch.device, hop_fraction: float = 0.5,
                       batch: int = 32, exemplar_bank: Any = None, material: int | None = None,
                       segment_seconds: float = SEGMENT_SECONDS, features: torch.Tensor | None = None,
                       ) -> tuple[torch.Tensor, dict[str, Any]]:
    """The sound [T] of a whole video: sliding clip-length windows, generated and overlap-added
    (``VideoSound``), gathered in memory and scaled into [-1, 1]. ``write_video_sound`` streams to a file.

    With an ``avgen.ExemplarBank`` each window takes its nearest bank clip (paper Eq. 8) instead of
    the raw sound, and the summary's ``provenance`` records which clip and how similar. ``material``
    (a class index) forces the generator's class (``Generator.class_outputs``). ``features`` are the video's
    ``video_features`` when the caller has them already (several models on one encoder).
    """
    job = VideoSound(video, recipe, encoder, representation, model, meta, device, hop_fraction=hop_fraction,
                     batch=batch, exemplar_bank=exemplar_bank, material=material, segment_seconds=segment_seconds,
                     features=features)
    return within_unit(torch.cat(list(job.blocks()))), job.summary


def within_unit(wave: torch.Tensor) -> torch.Tensor:
    """``wave`` scaled into [-1, 1] when its peak exceeds it (for PCM), else unchanged."""
    peak = float(wave.abs().max()) if wave.numel() else 0.0
    return wave / peak if peak > 1.0 else wave


def write_video_sound(job: "VideoSound", path: Path, progress: Any = None) -> Path:
    """Stream a ``VideoSound`` into a 16-bit wav at ``path`` (atomically) in memory that does not grow with
    the video's length: blocks go to a float scratch file, then are copied, scaled into [-1, 1] if they exceed it.

    Both files are written with Python file writes, so a full disk is an ``OSError`` that ``atomic_path``
    turns into one line, keeping any earlier file at ``path``."""
    import struct

    import numpy as np

    from avgen._core.atomic import TEMP_SUFFIX, atomic_path

    rate = job.summary["sample_rate"]
    path = Path(path)
    peak, samples = 0.0, 0
    with atomic_path(path) as final:
        scratch = final.with_name(final.name.removesuffix(TEMP_SUFFIX) + ".float" + TEMP_SUFFIX)  # a temporary file too
        try:
            with open(scratch, "wb") as raw:
                for block in job.blocks(progress):
                    data = block.numpy().astype("<f4", copy=False)
                    peak = max(peak, float(np.abs(data).max()) if data.size else 0.0)
                    samples += data.size
                    raw.write(data.tobytes())
            scale = 1.0 / peak if peak > 1.0 else 1.0
            with open(scratch, "rb") as raw, open(final, "wb") as out:
                out.write(struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + 2 * samples, b"WAVE", b"fmt ", 16, 1, 1,
                                      rate, 2 * rate, 2, 16, b"data", 2 * samples))
                while chunk := raw.read(4 * rate * 10):
                    data = np.frombuffer(chunk, dtype="<f4") * scale
                    out.write(np.rint(np.clip(data, -1.0, 1.0) * 32767).astype("<i2").tobytes())
        finally:
            scratch.unlink(missing_ok=True)
    return path


class VideoSound:
    """The generated sound of one video, produced ``segment_seconds`` of windows at a time.

    Windows of the training clip length start every ``hop_fraction`` of a clip (for representations whose
    frames tile time, on a frame boundary). Each run of windows reads only the frames it needs, predicts,
    and adds to an ``OverlapAdd``: the merged representation (then decoded by a ``SegmentDecoder``), or
    the sound of each window (exemplars, or representations without frame hop). ``blocks`` yields the
    sound in order; ``summary`` is complete once it is exhausted. Memory does not grow with the video.
    """

    def __init__(self, video: Path, recipe: Any, encoder: Any, representation: Any, model: torch.nn.Module,
                 meta: dict[str, Any], device: torch.device, hop_fraction: float = 0.5, batch: int = 32,
                 exemplar_bank: Any = None, material: int | None = None,
                 segment_seconds: float = SEGMENT_SECONDS, features: torch.Tensor | None = None,
                 precision: tuple[str, dict[str, Any]] | None = None) -> None:
        from avgen._core.media import probe

        info = probe(video)
        if not info.has_video:
            raise AvgenError(f"{video}: has no video stream; avgen generate needs a video")
        self.video, self.recipe, self.encoder, self.representation = Path(video), recipe, encoder, representation
        self.model, self.device, self.batch, self.bank, self.material = model, device, batch, exemplar_bank, material
        self.clip = clip_seconds(recipe, meta)
        self.rate = int(meta.get("sample_rate") or representation.sample_rate)
        self.duration = float(info.duration)
        if self.duration <= 0:
            raise AvgenError(f"{video}: zero-length video")
        self.samples, self.total = round(self.clip * self.rate), round(self.duration * self.rate)
        if exemplar_bank is not None and tuple(exemplar_bank.waves.shape[1:]) != (self.samples,):
            raise AvgenError(f"exemplar bank ({exemplar_bank.source}): clips of {exemplar_bank.waves.shape[-1]} samples, "
                             f"the model's are {self.samples} ({self.clip} s at {self.rate} Hz)")
        self.frame_hop = representation.frame_hop if exemplar_bank is None else None
        # window hop in representation frames (0 without frame hop)
        self.step = max(1, round(self.clip * hop_fraction * self.rate / self.frame_hop)) if self.frame_hop else 0
        hop = self.step * self.frame_hop / self.rate if self.frame_hop else self.clip * hop_fraction
        self.starts = window_starts(self.duration, self.clip, hop)
        self.per_run = max(1, round(segment_seconds / hop))  # windows generated together
        self.segment_seconds = segment_seconds
        self.frames_per_clip = frames_per_clip(self.clip, encoder.fps)
        self.video_frames = frames_per_clip(max(self.duration, self.clip), encoder.fps)
        self.names = list(meta.get("class_names") or [])
        self.features = features  # [frames, dim] of the whole video, when given: not read again
        self.clock = _Clock()
        if precision is None:  # not decided by the caller (``SoundModel.frames_precision``): decide here
            precision = ("fp32", {}) if features is not None else frames_precision(
                meta, device, encoder, model, self.video, self.frames_per_clip, recipe.featurize.precision)
        self.precision, checked = precision[0], dict(precision[1])
        self.clock.lap("precision")
        self.summary: dict[str, Any] = {"video": str(Path(video).absolute()), "seconds": self.duration, "mode": "windows",
                                        "windows": len(self.starts),
                                        "sample_rate": self.rate, "encoder_precision": self.precision, **checked}

    def _first_frame(self, start: float) -> int:
        return min(round(start * self.encoder.fps), max(self.video_frames, self.frames_per_clip) - self.frames_per_clip)

    def _window_features(self, indices: range) -> torch.Tensor:
        """Features [W, frames_per_clip, dim] of the windows ``indices``, from only the frames they cover."""
        firsts = [self._first_frame(self.starts[i]) for i in indices]
        if self.features is not None:
            features = fit_frames(self.features, max(self.video_frames, self.frames_per_clip))
            return torch.stack([features[f:f + self.frames_per_clip] for f in firsts])
        if self.video_frames < self.frames_per_clip:  # a video shorter than one clip: pad with its last frame
            features = fit_frames(video_features(self.encoder, self.video, self.duration, count=self.video_frames,
                                                 reader=self.reader, precision=self.precision), self.frames_per_clip)
            low = 0
        else:
            low = min(firsts)
            features = video_features(self.encoder, self.video, self.duration, first=low,
                                      count=max(firsts) + self.frames_per_clip - low, reader=self.reader,
                                      precision=self.precision)
        return torch.stack([features[f - low:f - low + self.frames_per_clip] for f in firsts])

    def __iter__(self) -> Iterator[torch.Tensor]:
        """``for block in model.stream(video)``: the blocks, in order (``blocks()`` without a progress bar)."""
        return self.blocks()

    def blocks(self, progress: Any = None) -> Iterator[torch.Tensor]:
        """The sound [n] in consecutive blocks; ``progress`` (a (rich Progress, task) pair) advances per window."""
        from avgen._core.media import FrameReader

        phase = raw_phase(self.recipe, self.representation)
        decoder = None
        if self.frame_hop:  # windows' frames merge into one representation, decoded in long segments
            frames = self.representation.frames(self.total)
            merged = OverlapAdd(self.representation.frames(self.samples), frames)
            decoder = SegmentDecoder(
                lambda rep, length, prefix: decode(self.representation, rep, phase, length, self.device, reference=prefix),
                self.frame_hop, self.total, frames, round(self.segment_seconds * self.rate / self.frame_hop),
                round(DECODE_OVERLAP_SECONDS * self.rate / self.frame_hop),
                continues=bool(self.representation.continues_phase))
        else:  # each window's sound, overlap-added
            merged = OverlapAdd(self.samples, self.total)
        self.probability_sum, provenance = None, []
        self.reader = FrameReader(self.video, self.encoder.fps, self.encoder.input_size)
        try:
            yield from self._runs(merged, decoder, phase, provenance, progress)
        finally:
            self.reader.close()
        self._finish_summary(provenance)

    def _runs(self, merged: "OverlapAdd", decoder: "SegmentDecoder | None", phase: str,
              provenance: list[dict[str, Any]], progress: Any) -> Iterator[torch.Tensor]:
        """Each run of ``per_run`` windows: features, generator, then its finished sound."""
        from avgen._core.retrieval import build_index, search, time_average

        index = build_index(self.recipe.index, self.bank.reps) if self.bank is not None else None  # the recipe's [index]
        clock, starts = self.clock, self.starts
        for lo in range(0, len(starts), self.per_run):
            indices = range(lo, min(lo + self.per_run, len(starts)))
            windows = self._window_features(indices)
            clock.lap("features")
            labels = None if self.material is None else torch.full((len(indices),), int(self.material), dtype=torch.long)
            outputs = predict(self.model, windows, self.device, batch=self.batch, labels=labels)
            clock.lap("generator")
            probabilities = self.model.class_probabilities(outputs)
            if probabilities is not None:
                part = probabilities.double().sum(0)
                self.probability_sum = part if self.probability_sum is None else self.probability_sum + part
            ahead = indices.stop < len(starts)  # later windows still reach back before their start
            until = round(starts[indices.stop] * self.rate) if ahead else self.total  # where the sound is final
            if self.bank is not None:  # the nearest bank clip of each window (paper Eq. 8)
                scores, nearest = search(index, time_average(outputs["rep"]), 1)
                clock.lap("exemplar")
                merged.add(self.bank.waves[nearest[:, 0]].float(), [round(starts[i] * self.rate) for i in indices])
                provenance.extend(
                    {"start": round(starts[i], 4), "end": round(min(starts[i] + self.clip, self.duration), 4),
                     **self.bank.entries[int(j)], "similarity": round(float(score), 6)}
                    for i, j, score in zip(indices, nearest[:, 0], scores[:, 0]))
                out = [merged.pop(until)]
            elif self.frame_hop:
                merged.add(outputs["rep"], [i * self.step for i in indices])
                block = merged.pop(indices.stop * self.step if ahead else decoder.frames)
                clock.lap("mix")
                out = decoder.push(block) + ([] if ahead else decoder.finish())
            else:  # a representation without frame hop: decode each window, overlap-add the sound
                pieces = decode(self.representation, outputs["rep"], phase, self.samples, self.device)
                merged.add(pieces, [round(starts[i] * self.rate) for i in indices])
                out = [merged.pop(until)]
            clock.lap("decode")
            if progress is not None:
                progress[0].advance(progress[1], len(indices))
            yield from (piece for piece in out if piece.numel())

    def _finish_summary(self, provenance: list[dict[str, Any]]) -> None:
        summary = self.summary
        summary["timings"] = self.clock.laps
        if self.probability_sum is not None and self.names:
            mean = (self.probability_sum / len(self.starts)).float()
            top = mean.topk(min(3, len(self.names)))
            summary["classes"] = {self.names[int(i)]: round(float(p), 4) for p, i in zip(top.values, top.indices)}
            summary["predicted"] = self.names[int(top.indices[0])]
        if self.material is not None:
            summary["material"] = self.names[self.material] if self.names else self.material
        if self.bank is not None:
            summary["exemplars"] = self.bank.source
            summary["provenance"] = provenance


class _Clock:
    """Seconds spent in each named phase, in order (``laps``), summed over repeats."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(self.laps.get(name, 0.0) + now - self._last, 4)
        self._last = now
