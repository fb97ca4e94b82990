"""Overlap-add of generated windows: OverlapAdd (streaming), crossfade_windows and SegmentDecoder (phase-continuous decode)."""

from __future__ import annotations

from typing import Any

import torch


class OverlapAdd:
    """Streaming ``crossfade_windows``: Hann-weighted pieces [..., L] added at increasing offsets along the last
    axis and handed out (normalised by the summed weights) as soon as no later piece can reach them.

    It makes the same sums in the same order as one pass over all pieces, so the result is identical;
    only the part not yet handed out is held in memory.
    """

    def __init__(self, length: int, total: int) -> None:
        self.length, self.total = int(length), int(total)
        self.weight = torch.hann_window(self.length, periodic=False, dtype=torch.float64).clamp_min(1e-3)
        self.out: torch.Tensor | None = None
        self.norm = torch.zeros(0, dtype=torch.float64)
        self.offset = 0  # the global index of the buffers' first element

    def _grow(self, lead: tuple[int, ...], end: int) -> None:
        if self.out is None:
            self.out = torch.zeros(*lead, 0, dtype=torch.float64)
        missing = end - self.offset - self.norm.shape[0]
        if missing > 0:
            self.out = torch.cat([self.out, self.out.new_zeros(*self.out.shape[:-1], missing)], dim=-1)
            self.norm = torch.cat([self.norm, self.norm.new_zeros(missing)])

    def add(self, pieces: torch.Tensor, starts: list[int]) -> None:
        """Pieces [W, ..., L] at global offsets ``starts`` (not before what was already handed out)."""
        if not starts:
            return
        if starts[0] < self.offset:
            raise ValueError(f"piece at {starts[0]} is before {self.offset}, which was already handed out")
        self._grow(tuple(pieces.shape[1:-1]), max(starts) + self.length)
        for piece, start in zip(pieces.double(), starts):
            at = start - self.offset
            self.out[..., at:at + self.length] += piece * self.weight
            self.norm[at:at + self.length] += self.weight

    def pop(self, upto: int) -> torch.Tensor:
        """The finished signal from the last ``pop`` to ``upto`` (at most ``total``), as float32."""
        upto = min(int(upto), self.total)
        count = max(0, upto - self.offset)
        if self.out is None:
            raise ValueError("nothing was added")
        self._grow(tuple(self.out.shape[:-1]), upto)
        done = (self.out[..., :count] / self.norm[:count].clamp_min(1e-8)).float()
        self.out, self.norm = self.out[..., count:].clone(), self.norm[count:].clone()
        self.offset += count
        return done


def crossfade_windows(pieces: torch.Tensor, starts: list[int], total: int) -> torch.Tensor:
    """Windows [W, ..., L] cross-faded into one signal [..., total]: each placed at its offset along the
    last axis, Hann-weighted and normalised by the summed weights. For waveforms (samples) and
    representations (frames); not the STFT's overlap-add of frames, which lives in the audio plugin."""
    merged = OverlapAdd(pieces.shape[-1], total)
    merged.add(pieces, starts)
    return merged.pop(total)


class SegmentDecoder:
    """Decodes a representation [D, F] that arrives a block of frames at a time, ``segment`` frames at a time.

    Consecutive segments overlap by ``overlap`` frames and their sounds cross-fade (raised cosine) over the
    middle half of the overlap, away from each decode's edges. With ``continues`` each segment's decode is
    given the previous segment's sound over the overlap, so (for Griffin-Lim) its phase starts from it and
    the two agree where they cross-fade instead of cancelling. A representation of at most
    segment + overlap frames is decoded in one piece, exactly as ``decode`` would.
    """

    def __init__(self, decode_fn: Any, hop: int, total: int, frames: int, segment: int, overlap: int,
                 continues: bool = False) -> None:
        self.decode_fn, self.hop, self.total, self.frames = decode_fn, int(hop), int(total), int(frames)
        self.continues = continues  # decode_fn(rep, length, prefix) continues the sound prefix [1, T'] (else None)
        self.prefix: torch.Tensor | None = None
        self.segment, self.overlap = max(1, int(segment)), max(2, int(overlap))
        self.pending: list[torch.Tensor] = []
        self.have = 0  # frames received
        self.index = 0  # next segment
        self.tail: torch.Tensor | None = None  # the previous segment's sound from where the next fade starts
        self.emitted = 0  # global samples handed out
        self.margin = (self.overlap - 1) * self.hop // 4  # the fade keeps this far from both decodes' edges
        self.done = False

    def _bounds(self, j: int) -> tuple[int, int, bool]:
        first = j * self.segment
        last = first + self.segment + self.overlap
        return first, min(last, self.frames), last >= self.frames

    def push(self, block: torch.Tensor) -> list[torch.Tensor]:
        """Take frames [D, n] (in order); return the sound now final (possibly nothing)."""
        if block.shape[-1]:
            self.pending.append(block)
            self.have += block.shape[-1]
        out: list[torch.Tensor] = []
        while not self.done:
            first, last, final = self._bounds(self.index)
            if self.have < last:
                break
            out.extend(self._decode_segment(first, last, final))
            self.done = final
        return out

    def _decode_segment(self, first: int, last: int, final: bool) -> list[torch.Tensor]:
        held = torch.cat(self.pending, dim=-1)
        base = self.have - held.shape[-1]  # global frame of held[..., 0]
        start = first * self.hop  # global sample of the decoded sound's first sample
        length = self.total - start if final else (last - first - 1) * self.hop
        wave = self.decode_fn(held[..., first - base:last - base][None], length, self.prefix)[0]
        self.pending = [] if final else [held[..., first + self.segment - base:]]
        self.index += 1
        pieces = []
        if self.tail is not None:  # cross-fade with the previous segment's tail
            blend = self.tail.shape[-1] - self.margin
            at = self.emitted - start
            fade = 0.5 - 0.5 * torch.cos(torch.linspace(0, torch.pi, blend + 2, dtype=torch.float64)[1:-1])
            pieces.append((self.tail[:blend].double() * (1 - fade) + wave[at:at + blend].double() * fade).to(wave.dtype))
            self.emitted += blend
            self.tail = None
        cut = self.total if final else (first + self.segment) * self.hop + self.margin  # where the next fade starts
        pieces.append(wave[self.emitted - start:cut - start])
        if not final:
            self.tail = wave[cut - start:]
            self.prefix = wave[None, self.segment * self.hop:] if self.continues else None
        self.emitted = cut
        return pieces

    def finish(self) -> list[torch.Tensor]:
        """The rest of the sound once every frame was pushed."""
        if self.have < self.frames:
            raise ValueError(f"got {self.have} of {self.frames} frames")
        return self.push(torch.zeros(0))
