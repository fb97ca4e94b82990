"""Motion energy from frame differences, on CPU: what moves between two frames once the camera shake is removed.

Per pair of consecutive frames (grey, each divided by its mean brightness so lighting flicker
cancels): the previous frame is shifted by the whole-pixel offset (within +-``max_shift``)
that matches the current one's row and column brightness profiles best (global motion
compensation: a shaking camera moves every pixel), the signed difference is averaged over ``cell`` x ``cell`` blocks (pixel noise
averages out, a moving object does not) and its magnitude kept per block. The motion energy
of frame t is the mean of its strongest blocks minus the median block (the noise floor): a
small moving object (a stick) counts fully, a frame-wide shimmer not at all.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

def grey(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, H, W], each frame divided by its mean brightness."""
    g = frames.float().mean(-1)
    return g / g.mean(dim=(1, 2), keepdim=True).clamp_min(1.0)


def camera_shift(prev: torch.Tensor, cur: torch.Tensor, r: int) -> tuple[int, int]:
    """The whole-pixel shift (dy, dx) within +-r that best maps prev onto cur, from the frames' row and column
    brightness profiles (a moving object changes them little; a shaking camera moves them whole)."""
    def best(p: torch.Tensor, c: torch.Tensor) -> int:
        n = c.numel()
        costs = torch.stack([(c[r:n - r] - p[r + s:n - r + s]).abs().mean() for s in range(-r, r + 1)])
        return int(costs.argmin()) - r
    return best(prev.mean(1), cur.mean(1)), best(prev.mean(0), cur.mean(0))


def motion_cells(frames: torch.Tensor, max_shift: int = 4, cell: int = 4) -> torch.Tensor:
    """Per frame t, the magnitude of the camera-compensated change from frame t-1 in each block: [N, cells].

    Row 0 (no previous frame) is zero.
    """
    g = grey(frames)
    n, h, w = g.shape
    r = max(0, min(max_shift, (min(h, w) - cell) // 2 - 1))
    rows = []
    for t in range(1, n):
        dy, dx = camera_shift(g[t - 1], g[t], r)
        diff = g[t, r:h - r, r:w - r] - g[t - 1, r + dy:h - r + dy, r + dx:w - r + dx]
        rows.append(F.avg_pool2d(diff[None, None], cell)[0, 0].abs().flatten())
    cells = (((h - 2 * r) // cell) * ((w - 2 * r) // cell))
    return torch.stack([torch.zeros(cells), *rows]) if rows else torch.zeros(n, cells)


def motion_energy(cells: torch.Tensor, top: float = 0.02) -> torch.Tensor:
    """[N, cells] -> [N]: mean of the strongest ``top`` fraction of blocks minus the median block."""
    k = max(1, round(top * cells.shape[1]))
    strongest = cells.topk(k, dim=1).values.mean(1)
    return (strongest - cells.median(dim=1).values).clamp_min(0)


def contact_score(energy: torch.Tensor, before: int = 3) -> torch.Tensor:
    """[N] -> [N]: how much motion stops at frame t, >= 0.

    energy[t] is the motion between frames t-1 and t, so the frame of contact is the last one
    reached by motion: score(t) = mean of energy[t-before+1 .. t] (the approach) minus
    energy[t+1] (the object rests after t).
    """
    m = energy.double()
    n = m.numel()
    if n == 0:
        return m.float()
    pad = torch.cat([m.new_zeros(before - 1), m])
    approach = torch.stack([pad[i:i + n] for i in range(before)]).mean(0)  # mean of m[t-before+1 .. t]
    after = torch.cat([m[1:], m[-1:]])
    return (approach - after).clamp_min(0).float()


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
