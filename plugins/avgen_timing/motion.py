"""Motion energy from frame differences, on CPU: what moves between two frames once the camera shake is removed.

Per pair of consecutive frames (grey, each divided by its mean brightness so lighting flicker
cancels): the previous frame is shifted by the whole-pixel offset (within +-``max_shift``)
that matches the current one best (global motion compensation: a shaking camera moves every
pixel), the signed difference is averaged over ``cell`` x ``cell`` blocks (pixel noise
averages out, a moving object does not) and its magnitude kept per block. The motion energy
of frame t is the mean of its strongest blocks minus the median block (the noise floor): a
small moving object (a stick) counts fully, a frame-wide shimmer not at all.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SHIFT_CHUNK = 16  # frame pairs compared at once (memory: chunk x shifts x H x W floats)


def grey(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, H, W], each frame divided by its mean brightness."""
    g = frames.float().mean(-1)
    return g / g.mean(dim=(1, 2), keepdim=True).clamp_min(1.0)


def motion_cells(frames: torch.Tensor, max_shift: int = 4, cell: int = 4) -> torch.Tensor:
    """Per frame t, the magnitude of the camera-compensated change from frame t-1 in each block: [N, cells].

    Row 0 (no previous frame) is zero.
    """
    g = grey(frames)
    n, h, w = g.shape
    r = max(0, min(max_shift, (min(h, w) - cell) // 2 - 1))
    core = g[:, r:h - r, r:w - r]
    shifts = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]
    out = [torch.zeros(1, (core.shape[1] // cell) * (core.shape[2] // cell))]
    for lo in range(1, n, SHIFT_CHUNK):
        hi = min(n, lo + SHIFT_CHUNK)
        cur = core[lo:hi]  # [c, h', w']
        prev = torch.stack([g[lo - 1:hi - 1, r + dy:h - r + dy, r + dx:w - r + dx] for dy, dx in shifts], 1)
        diff = cur[:, None] - prev  # [c, shifts, h', w']
        best = diff.abs().mean(dim=(2, 3)).argmin(1)  # the camera's shift for each pair
        chosen = diff[torch.arange(hi - lo), best]  # [c, h', w']
        blocks = F.avg_pool2d(chosen[:, None], cell)[:, 0].abs()
        out.append(blocks.flatten(1))
    return torch.cat(out)


def motion_energy(cells: torch.Tensor, top: float = 0.02) -> torch.Tensor:
    """[N, cells] -> [N]: mean of the strongest ``top`` fraction of blocks minus the median block."""
    k = max(1, round(top * cells.shape[1]))
    strongest = cells.topk(k, dim=1).values.mean(1)
    return (strongest - cells.median(dim=1).values).clamp_min(0)


def contact_score(energy: torch.Tensor, before: int = 3) -> torch.Tensor:
    """[N] -> [N]: how much motion stops at frame t: mean energy of the ``before`` frames before t minus the
    smaller of the energies into t and t+1 (an object that moved and then rests, or turns back), >= 0."""
    m = energy.double()
    n = m.numel()
    pad = torch.cat([m.new_zeros(before), m])
    past = torch.stack([pad[i:i + n] for i in range(before)]).mean(0)  # mean of m[t-before .. t-1]
    nxt = torch.cat([m[1:], m[-1:]]) if n else m
    return (past - torch.minimum(m, nxt)).clamp_min(0).float()


def pick_peaks(score: np.ndarray, gap: int, floor: float) -> np.ndarray:
    """Frames t where score[t] > floor and score[t] is the largest within +-gap frames (the first of equals)."""
    peaks: list[int] = []
    n = len(score)
    for t in range(n):
        if score[t] <= floor:
            continue
        lo, hi = max(0, t - gap), min(n, t + gap + 1)
        window = score[lo:hi]
        if score[t] >= window.max() and not (score[lo:t] == score[t]).any():
            peaks.append(t)
    return np.asarray(peaks, dtype=np.int64)
