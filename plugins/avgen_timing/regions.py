"""``region_contacts``: contacts where the most-moving region of the picture peaks, on CPU; trainable on footage with
sound, where cross-validation decides whether a learned head on motion vectors beats that prior.

The prior (no training). Per pair of *distinct* frames (a frame bit-identical to the one before it
is the reader repeating a frame of a slower video, and carries no motion: a 24 fps video read at
30 fps repeats every fifth frame, which would look like a stop), the camera-compensated block
differences of ``motion_cells`` (4 x 4 blocks at 128 px), divided by the frames between the two,
are averaged over 3 x 3 blocks (a region of 12 px, about the size of a hand, a stick's head or
a hammer at 128 px); the score of frame t is the mean of its strongest 0.3 % of regions minus the
median region. Contacts are the score's peaks at least ``min_gap`` apart, above ``threshold`` x
the clip's largest score. A strike is fast: the region's motion peaks within a frame or two of
the contact, and the peak of the *most*-moving region is what measured best on real footage
(docs/timing_detectors.md), better than "motion stops" or any velocity change.

The head (trained). Per frame fifteen statistics, log scale, over +-6 frames go through an MLP
(as in ``learned_contacts``): five of the block differences (mean, strongest 2 % minus median,
share changed, strongest 0.3 % and 3 % of regions), six of per-block motion vectors (block
matching of 8 x 8 blocks every 4 px within +-5 px, sub-pixel; camera motion = the frame's median
vector, removed): the strongest 2 % of speed, of velocity change |v_out - v_in| (v_out read where
the block went: a block that keeps moving keeps its velocity), of deceleration |v_in| - |v_out|,
of reversal, of matching evidence, and the camera's own velocity change (an impact shakes it);
and four of motion that stops where it was (``stop_statistics``). A fitted file names the
statistics its head reads, so heads fitted before the last four keep reading the first eleven.

``fit_model`` (``avgen timing fit --detector region_contacts``, a recipe's ``[detector]``,
``timing sync --leave-one-out``) learns from videos with sound (annotated times where a video
has them, else its soundtrack's onsets): it picks the prior's threshold, fits the head in
``folds``-fold cross-validation by video, and keeps the head only where its held-out F1 beats
the prior's. On synthetic hits the head wins; on real footage the prior does.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file

from avgen import AvgenError, BuildContext, Detector, atomic_path, weights_dir

from avgen_timing.detector import events
from avgen_timing.learned import Head, fit_head, labels_for
from avgen_timing.motion import grey, motion_cells, pick_peaks

SETTINGS = {"fps": 30.0, "input_size": 128, "max_shift": 4, "cell": 4, "region": 3, "top": 0.003,
            "block": 8, "stride": 4, "search": 5, "window": 6}
CHANGED = 0.04  # a block changed when its mean brightness change exceeds this share of the frame's mean
FEATURES = ("mean", "energy", "changed", "region", "region_wide",
            "speed", "velocity_change", "deceleration", "reversal", "evidence", "camera_change",
            "stop", "stop_wide", "approach_stop", "stop_at_top")
FIRST_FEATURES = FEATURES[:11]  # what heads fitted before the four stop statistics read (their files name none)
PRIOR_THRESHOLDS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)  # of the clip's largest score
HEAD_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # probability
TOLERANCE = 0.1  # s: a contact within this of a true one is correct (as `avgen timing sync` scores)


def default_weights() -> Path:
    return weights_dir() / "timing" / "region_contacts.safetensors"


# ---------------------------------------------------------------------------------------------- frames and motion


def distinct_frames(frames: torch.Tensor) -> torch.Tensor:
    """bool [N]: frame t is not a bit-identical repeat of frame t-1 (frame 0 always counts)."""
    if frames.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool)
    same = (frames[1:] == frames[:-1]).flatten(1).all(1)
    return torch.cat([torch.ones(1, dtype=torch.bool), ~same])


def frame_gaps(keep: torch.Tensor) -> torch.Tensor:
    """float [M]: for each distinct frame, how many frames since the previous distinct one (1 for the first)."""
    index = torch.nonzero(keep)[:, 0].float()
    return torch.cat([torch.ones(1), index[1:] - index[:-1]]) if index.numel() else torch.zeros(0)


def spread(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Values of the distinct frames [M, ...] -> [N, ...]: a repeated frame takes the values of the frame it repeats."""
    return values[torch.cumsum(keep.long(), 0) - 1]


def cell_grid(size: int, max_shift: int, cell: int) -> int:
    """Blocks per side of ``motion_cells`` on a square frame of ``size`` px."""
    r = max(0, min(max_shift, (size - cell) // 2 - 1))
    return (size - 2 * r) // cell


def top_minus_median(x: torch.Tensor, top: float) -> torch.Tensor:
    """[M, B] -> [M]: mean of the strongest ``top`` fraction of B minus the median, >= 0."""
    k = max(1, round(top * x.shape[1]))
    return (x.topk(k, dim=1).values.mean(1) - x.median(dim=1).values).clamp_min(0)


def regions(cells: torch.Tensor, side: int, region: int) -> torch.Tensor:
    """[M, side * side] block changes -> [M, side * side]: their mean over ``region`` x ``region`` blocks."""
    if region <= 1:
        return cells
    grid = cells.reshape(-1, 1, side, side)
    return F.avg_pool2d(grid, region, 1, region // 2, count_include_pad=False)[:, 0, :side, :side].reshape(cells.shape)


def match_blocks(g: torch.Tensor, block: int, stride: int, search: int) -> tuple[torch.Tensor, ...]:
    """Block matching of each frame against the one before: g [M, H, W] grey -> for frames 1..M-1 the displacement
    [M-1, 2, gh, gw] (dy, dx; sub-pixel) where a block of frame t was in frame t-1, its cost there and at zero
    displacement (mean absolute difference). Blocks of ``block`` px every ``stride`` px, within +-``search`` px."""
    cur, prev = g[1:], g[:-1]
    n, h, w = cur.shape
    side = 2 * search + 1
    padded = F.pad(prev[:, None], (search,) * 4, mode="replicate")[:, 0]
    buf = torch.empty_like(cur)
    costs = []
    for dy in range(-search, search + 1):
        for dx in range(-search, search + 1):
            torch.sub(cur, padded[:, search + dy:search + dy + h, search + dx:search + dx + w], out=buf)
            buf.abs_()
            pooled = F.avg_pool2d(buf[:, None], stride, stride)  # stride x stride cells, then blocks of them
            if block > stride:
                pooled = F.avg_pool2d(pooled, block // stride, 1)
            costs.append(pooled[:, 0])
    cost = torch.stack(costs, 1)  # [n, side * side, gh, gw]
    best = cost.argmin(1)
    iy, ix = best // side, best % side
    low = cost.gather(1, best[:, None])[:, 0]
    grid = cost.view(n, side, side, *cost.shape[2:])

    def refine(i: torch.Tensor, other: torch.Tensor, axis: int) -> torch.Tensor:
        """i + the vertex of the parabola through the costs at i-1, i, i+1 along ``axis`` (kept at the border)."""
        values = []
        for j in ((i - 1).clamp(0, side - 1), (i + 1).clamp(0, side - 1)):
            if axis == 0:
                values.append(grid.gather(1, j[:, None, None].expand(-1, 1, side, -1, -1))[:, 0]
                              .gather(1, other[:, None])[:, 0])
            else:
                values.append(grid.gather(2, j[:, None, None].expand(-1, side, 1, -1, -1))[:, :, 0]
                              .gather(1, other[:, None])[:, 0])
        below, above = values
        curve = below - 2 * low + above
        offset = torch.where(curve > 1e-9, 0.5 * (below - above) / curve.clamp_min(1e-9), torch.zeros_like(curve))
        offset = torch.where((i == 0) | (i == side - 1), torch.zeros_like(offset), offset.clamp(-0.5, 0.5))
        return i.float() - search + offset

    displacement = torch.stack([refine(iy, ix, 0), refine(ix, iy, 1)], 1)
    return displacement, low, cost[:, (side * side) // 2]


def vector_statistics(g: torch.Tensor, gaps: torch.Tensor, settings: dict[str, Any], chunk: int = 32,
                      ) -> dict[str, torch.Tensor]:
    """Per distinct frame [M] the motion-vector statistics of the head (see the module docstring)."""
    m = g.shape[0]
    block, stride, search = settings["block"], settings["stride"], settings["search"]
    parts: list[tuple[torch.Tensor, ...]] = []
    for lo in range(0, max(m - 1, 0), chunk):  # pairs (t-1, t) for t in lo+1 .. lo+chunk
        parts.append(match_blocks(g[lo:min(m, lo + chunk + 1)], block, stride, search))
    gh, gw = parts[0][1].shape[1:] if parts else ((g.shape[1] - block) // stride + 1, (g.shape[2] - block) // stride + 1)
    disp = torch.cat([torch.zeros(1, 2, gh, gw)] + [p[0] for p in parts])
    low = torch.cat([torch.zeros(1, gh, gw)] + [p[1] for p in parts])
    zero = torch.cat([torch.zeros(1, gh, gw)] + [p[2] for p in parts])
    velocity = -disp / gaps[:, None, None, None]  # px per frame of the output rate, into frame t
    camera = velocity.flatten(2).median(2).values  # [M, 2]
    own = velocity - camera[:, :, None, None]
    # where each block of frame t goes: its velocity into t carried to the next distinct frame (grid units)
    ahead = torch.cat([gaps[1:], gaps[-1:]])[:, None, None]
    ys = torch.arange(gh, dtype=torch.float32)[:, None].expand(gh, gw)
    xs = torch.arange(gw, dtype=torch.float32)[None, :].expand(gh, gw)
    py = ys + velocity[:, 0] * ahead / stride
    px = xs + velocity[:, 1] * ahead / stride
    where = torch.stack([px / max(gw - 1, 1) * 2 - 1, py / max(gh - 1, 1) * 2 - 1], -1)
    following = torch.cat([own[1:], torch.zeros_like(own[:1])])
    out = F.grid_sample(following, where, mode="bilinear", padding_mode="border", align_corners=True)
    speed_in, speed_out = own.norm(dim=1), out.norm(dim=1)
    per_block = {
        "speed": speed_in,
        "velocity_change": (out - own).norm(dim=1),
        "deceleration": (speed_in - speed_out).clamp_min(0),
        "reversal": (-(own * out).sum(1)).clamp_min(0) / speed_in.clamp_min(0.5),
        "evidence": (zero - low) / gaps[:, None, None],
    }
    k = max(1, round(0.02 * gh * gw))
    stats = {name: q.flatten(1).topk(k, dim=1).values.mean(1) for name, q in per_block.items()}
    stats["camera_change"] = (torch.cat([camera[1:], camera[-1:]]) - camera).norm(dim=1)
    return stats


def frame_statistics(frames: torch.Tensor, settings: dict[str, Any], vectors: bool = True,
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 [N, H, W, 3] -> (prior score [N], the head's per-frame statistics [N, len(FEATURES)] (log scale) or
    None without ``vectors``). Computed on the distinct frames, each repeat taking its frame's values."""
    n = frames.shape[0]
    if n == 0:
        return torch.zeros(0), (torch.zeros(0, len(FEATURES)) if vectors else None)
    keep = distinct_frames(frames)
    distinct = frames[keep]
    gaps = frame_gaps(keep)
    cells = motion_cells(distinct, settings["max_shift"], settings["cell"]) / gaps[:, None]
    side = int(round(math.sqrt(cells.shape[1])))
    region = regions(cells, side, settings["region"])
    prior = spread(top_minus_median(region, settings["top"]), keep)
    if not vectors:
        return prior, None
    stats = {
        "mean": cells.mean(1), "energy": top_minus_median(cells, 0.02), "changed": (cells > CHANGED).float().mean(1),
        "region": top_minus_median(region, settings["top"]), "region_wide": top_minus_median(region, 0.03),
        **vector_statistics(grey(distinct), gaps, settings), **stop_statistics(region, settings["top"]),
    }
    per_frame = torch.log(torch.stack([stats[name] for name in FEATURES], 1) + 1e-3)
    return prior, spread(per_frame, keep)


def stop_statistics(region: torch.Tensor, top: float) -> dict[str, torch.Tensor]:
    """Per distinct frame [M] how much of the motion into it stops *in the same place* ([M, B] region motion in,
    each region's drop from frame t to the next distinct frame; after the last frame nothing moves): the strongest
    ``top`` and 3 % of the regions' drop, of the drop of regions that also moved into t-1 (an approach that
    stops), and the drop of the ``top`` regions that moved most into t. The whole-frame statistics cannot tell a
    motion that stops from one that goes on in the same place; a contact is the first."""
    after = torch.cat([region[1:], torch.zeros_like(region[:1])])
    before = torch.cat([torch.zeros_like(region[:1]), region[:-1]])
    drop = (region - after).clamp_min(0)
    k, wide = max(1, round(top * region.shape[1])), max(1, round(0.03 * region.shape[1]))
    moved = region.topk(k, dim=1).indices
    return {
        "stop": drop.topk(k, dim=1).values.mean(1),
        "stop_wide": drop.topk(wide, dim=1).values.mean(1),
        "approach_stop": (torch.minimum(before, region) - after).clamp_min(0).topk(k, dim=1).values.mean(1),
        "stop_at_top": (region.gather(1, moved) - after.gather(1, moved)).clamp_min(0).mean(1),
    }


def windowed(per_frame: torch.Tensor, window: int) -> torch.Tensor:
    """[N, F] -> [N, F (2 window + 1)]: the statistics of the frames around each frame (edges repeated)."""
    if per_frame.shape[0] == 0:
        return per_frame.new_zeros(0, per_frame.shape[1] * (2 * window + 1))
    padded = torch.cat([per_frame[:1].expand(window, -1), per_frame, per_frame[-1:].expand(window, -1)])
    return torch.stack([padded[i:i + per_frame.shape[0]] for i in range(2 * window + 1)], 1).flatten(1)


# ---------------------------------------------------------------------------------------------- the detector


class RegionContactsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weights: str = Field("none", description="what `avgen timing fit --detector region_contacts` learned; 'none': the "
                                             "prior, untrained; 'default': $AVGEN_HOME/weights/timing/"
                                             "region_contacts.safetensors")
    min_gap: float = Field(0.2, ge=0, le=10, description="two contacts are at least this far apart (s)")
    threshold: float | None = Field(None, ge=0, le=1, description="contacts below this are dropped: x the clip's largest "
                                    "score (prior; default 0.2, or as fitted) or probability (head; as fitted)")
    min_score: float = Field(0.1, ge=0, description="prior: confidence is score / max(largest score, this), the "
                                                     "score being a region's mean brightness change (share of the "
                                                     "frame's mean): a still video has no confident contact")


class Model:
    """What fitting keeps: 'prior' or 'head', the threshold, the head (or None), the statistics the head reads (by
    name, in order) and how the choice was made."""

    def __init__(self, mode: str, threshold: float, head: Head | None = None, report: dict[str, Any] | None = None,
                 features: tuple[str, ...] = FEATURES):
        self.mode, self.threshold, self.head, self.report = mode, threshold, head, report or {}
        self.features = tuple(features)

    def probability(self, per_frame: torch.Tensor) -> torch.Tensor:
        """The head's contact probability per frame from the statistics of ``frame_statistics`` [N, len(FEATURES)]."""
        columns = [FEATURES.index(name) for name in self.features]
        with torch.no_grad():
            return torch.sigmoid(self.head(windowed(per_frame[:, columns], SETTINGS["window"])))


class RegionContacts(Detector):
    """Contacts at the peaks of the most-moving region's motion, or of a fitted head's probability."""

    def __init__(self, p: RegionContactsParams, folder: Path | None = None, model: Model | None = None) -> None:
        self.p = p
        self.settings = dict(SETTINGS)
        self.fps = self.settings["fps"]
        self.input_size = self.settings["input_size"]
        self.model = model
        self.path: Path | None = None  # read on first use (a recipe's [detector] is built to be fitted)
        if model is None and p.weights != "none":
            self.path = default_weights() if p.weights == "default" else Path(p.weights)
            if folder is not None and not self.path.is_absolute() and p.weights != "default":
                self.path = folder / self.path  # kept in a run or model folder, named relative to it
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    def fitted(self) -> Model:
        if self.model is None:
            if self.path is None:
                self.model = Model("prior", 0.2)
            else:
                if not self.path.is_file():
                    raise AvgenError(f"region_contacts: nothing fitted at {self.path}; fit it with `avgen timing fit "
                                     f"VIDEOS --detector region_contacts`" + ("" if self.p.weights == "default"
                                                                              else f" -o {self.path}"))
                self.model = load_model(self.path)
        return self.model

    def threshold(self) -> float:
        return self.p.threshold if self.p.threshold is not None else self.fitted().threshold

    def strength(self, frames: torch.Tensor) -> torch.Tensor:
        if self._last is not None and self._last[0] is frames:  # detect() after strength() on the same frames
            return self._last[1]
        model = self.fitted()
        prior, per_frame = remembered_statistics(frames, self.settings, vectors=model.mode == "head")
        if model.mode == "head":
            out = model.probability(per_frame)
        else:
            out = prior
        self._last = (frames, out)
        return out

    def detect(self, frames: torch.Tensor) -> torch.Tensor:
        min_score = 1.0 if self.fitted().mode == "head" else self.p.min_score
        found = events(self.strength(frames), self.fps, self.p.min_gap, self.threshold(), min_score)
        self._last = None
        return found

    def fit(self, videos: list[Path], folder: Path) -> dict[str, Any]:
        """Fit on the videos' contacts (annotated times, else their own sound's onsets) and keep the result in
        ``folder`` as detector.safetensors."""
        model = fit_model(video_samples(videos, given=self.annotated), min_gap=self.p.min_gap, min_score=self.p.min_score)
        target = folder / "detector.safetensors"
        save_model(model, target, {"videos": len(videos)})
        self.model, self.path, self._last = model, None, None
        self.fit_summary = fit_summary(model)
        return {"weights": target.name}


def make_region_contacts(params: RegionContactsParams, context: BuildContext) -> RegionContacts:
    return RegionContacts(params, context.run_dir if context is not None else None)


# ---------------------------------------------------------------------------------------------- fitting


Sample = tuple[torch.Tensor, torch.Tensor, np.ndarray, str]  # prior [N], statistics [N, F], true times (s), source


def video_samples(videos: list[Path], labels: str = "auto", progress: Any = None,
                  given: dict[Path, list[float]] | None = None) -> dict[Path, Sample]:
    """Per video (prior score [N], per-frame statistics [N, F], contact times in seconds, 'annotated' or 'audio'):
    the annotated times (``given`` by the run's dataset, or a times file beside the video), else the onsets of its
    own soundtrack."""
    from avgen import read_frames

    from avgen_timing.footage import contact_times

    out = {}
    for video in videos:
        prior, per_frame = remembered_statistics(read_frames(video, SETTINGS["fps"], SETTINGS["input_size"]), SETTINGS)
        times, source = contact_times(video, labels, given)
        out[video] = (prior, per_frame, np.asarray(times, dtype=np.float64), source)
        if progress is not None:
            progress()
    return out


def remembered_statistics(frames: torch.Tensor, settings: dict[str, Any], vectors: bool = True,
                          ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``frame_statistics``, remembered in this process by the frames' content: `timing fit` then `timing sync
    --leave-one-out` compute each video's statistics once (the fit reads every video, then each held-out video is
    detected with a head fitted on the others), whichever labels go with them. Hashing the frames costs a few
    milliseconds per second of video against the statistics' second or two."""
    digest = hashlib.blake2b(frames.detach().cpu().contiguous().numpy().data, digest_size=16)
    digest.update(repr((tuple(frames.shape), sorted(settings.items()))).encode())
    key = digest.hexdigest()
    hit = _STATISTICS.get(key)
    if hit is not None and (hit[1] is not None or not vectors):
        return hit
    value = frame_statistics(frames, settings, vectors)
    _STATISTICS[key] = value
    while len(_STATISTICS) > 256:
        _STATISTICS.pop(next(iter(_STATISTICS)))
    return value


_STATISTICS: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}  # frames' digest -> frame_statistics


def f1_of(found: list[np.ndarray], truth: list[np.ndarray], tolerance: float = TOLERANCE) -> float:
    """Micro-averaged F1 of contact times against true times (one-to-one matches within +-tolerance)."""
    from avgen_timing.footage import match_times, scores

    matched = sum(len(match_times(f, t, tolerance)) for f, t in zip(found, truth))
    return scores(matched, sum(len(f) for f in found), sum(len(t) for t in truth))["f1"]


def peak_times(score: torch.Tensor, fps: float, min_gap: float, threshold: float, min_score: float) -> np.ndarray:
    """Seconds of the contacts ``events`` would return for this score."""
    s = score.double().numpy()
    top = max(float(s.max()) if s.size else 0.0, min_score, 1e-12)
    return pick_peaks(s / top, max(0, round(min_gap * fps)), threshold) / fps


def best_threshold(scores: list[torch.Tensor], truth: list[np.ndarray], grid: tuple[float, ...], min_gap: float,
                   min_score: float) -> tuple[float, float]:
    """(threshold of ``grid`` with the best F1, that F1); ties: the lower threshold."""
    fps = SETTINGS["fps"]
    results = [(f1_of([peak_times(s, fps, min_gap, th, min_score) for s in scores], truth), th) for th in grid]
    f1, th = max(results, key=lambda r: (r[0], -r[1]))
    return th, f1


def fit_model(samples: dict[Path, Sample], folds: int = 3, epochs: int = 300, seed: int = 0, min_gap: float = 0.2,
              min_score: float = 0.1) -> Model:
    """The prior with its best threshold, or a head fitted on all videos where the head's cross-validated F1 (each
    video scored by a head fitted on the other folds) beats the prior's. Folds are by video (sorted, round robin);
    with fewer than two videos, or no contact outside a fold, the prior is kept."""
    videos = sorted(samples)
    truth = [samples[v][2] for v in videos]
    if not any(len(t) for t in truth):
        raise AvgenError("no contact in the training videos (no annotated time, no onset in their sound)")
    prior_th, prior_f1 = best_threshold([samples[v][0] for v in videos], truth, PRIOR_THRESHOLDS, min_gap, min_score)
    report: dict[str, Any] = {"videos": len(videos), "prior_threshold": prior_th, "prior_f1": round(prior_f1, 4)}
    k = min(folds, len(videos))
    if k < 2:
        return Model("prior", prior_th, report={**report, "chosen": "prior", "why": "too few videos to cross-validate"})
    fps, window = SETTINGS["fps"], SETTINGS["window"]
    data = {v: (windowed(samples[v][1], window), labels_for(list(samples[v][2]), samples[v][1].shape[0], fps))
            for v in videos}
    held_out: dict[Path, torch.Tensor] = {}
    for fold in range(k):
        train = [v for i, v in enumerate(videos) if i % k != fold]
        if not any(data[v][1].sum() > 0 for v in train):
            return Model("prior", prior_th, report={**report, "chosen": "prior", "why": "a fold without contacts"})
        head = fit_head([data[v] for v in train], epochs=epochs, seed=seed)
        with torch.no_grad():
            for i, v in enumerate(videos):
                if i % k == fold:
                    held_out[v] = torch.sigmoid(head(data[v][0]))
    head_th, head_f1 = best_threshold([held_out[v] for v in videos], truth, HEAD_THRESHOLDS, min_gap, 1.0)
    report.update({"folds": k, "head_threshold": head_th, "head_cv_f1": round(head_f1, 4)})
    if head_f1 <= prior_f1:
        return Model("prior", prior_th, report={**report, "chosen": "prior"})
    head = fit_head([data[v] for v in videos], epochs=epochs, seed=seed)
    return Model("head", head_th, head, report={**report, "chosen": "head"})


def fit_summary(model: Model) -> str:
    """What fitting kept, in one line: the prior or the learned head, its threshold, and the F1s that decided it."""
    report = model.report
    head = (f"; the learned head's, cross-validated by video, {report['head_cv_f1']:.3f}" if "head_cv_f1" in report
            else f"; no learned head tried: {report['why']}" if report.get("why") else "")
    if model.mode == "head":
        return (f"kept the learned head at threshold {model.threshold:g} (cross-validated F1 {report.get('head_cv_f1', 0):.3f} "
                f"against the untrained prior's {report.get('prior_f1', 0):.3f})")
    return f"kept the untrained prior at threshold {model.threshold:g} (its F1 on these videos {report.get('prior_f1', 0):.3f}{head})"


def save_model(model: Model, path: Path, info: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"threshold": torch.tensor([model.threshold], dtype=torch.float32)}
    if model.head is not None:
        tensors.update({f"head.{k}": v.contiguous() for k, v in model.head.state_dict().items()})
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"detector": "region_contacts", "mode": model.mode,
                                               "features": json.dumps(list(model.features)),
                                               "settings": json.dumps(SETTINGS), "trained_on": json.dumps(info),
                                               "report": json.dumps(model.report)})
    return path


def load_model(path: Path) -> Model:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
        mode = meta.get("mode")
        if meta.get("detector") != "region_contacts" or mode not in ("prior", "head"):
            raise ValueError("not written by `avgen timing fit --detector region_contacts`")
        features = tuple(json.loads(meta["features"])) if "features" in meta else FIRST_FEATURES
        if not set(features) <= set(FEATURES):
            raise ValueError(f"it reads statistics this avgen does not compute: {sorted(set(features) - set(FEATURES))}")
        head = None
        if mode == "head":
            state = {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")}
            if state["mean"].numel() != len(features) * (2 * SETTINGS["window"] + 1):
                raise ValueError(f"its head reads {state['mean'].numel()} inputs, not {len(features)} statistics over "
                                 f"{2 * SETTINGS['window'] + 1} frames")
            head = Head(state["mean"].numel())
            head.load_state_dict(state)
            head.eval()
        return Model(mode, round(float(tensors["threshold"][0]), 6), head, json.loads(meta.get("report", "{}")), features)
    except Exception as exc:  # noqa: BLE001  one line for any unreadable file
        raise AvgenError(f"region_contacts: {path} is unreadable ({exc}); fit it again with `avgen timing fit "
                         "VIDEOS --detector region_contacts`") from exc


def leave_one_out_factory(settings: dict[str, str]) -> Any:
    """For `timing sync --leave-one-out`: for each video, region_contacts fitted on the other videos' sound."""
    samples: dict[Path, Sample] = {}

    def factory(videos: list[Path], video: Path) -> RegionContacts:
        if len(videos) < 2:
            raise AvgenError("--leave-one-out needs at least two videos")
        if not samples:
            samples.update(video_samples(videos, "audio"))
        params = RegionContactsParams(**{k: v for k, v in settings.items() if k != "weights"})
        model = fit_model({v: s for v, s in samples.items() if v != video}, min_gap=params.min_gap,
                          min_score=params.min_score)
        return RegionContacts(params, model=model)

    return factory


def fit_videos(videos: list[Path], labels: str, run_dir: Path | None, out: Path | None, epochs: int, seed: int,
               roots: list[str]) -> str:
    """`avgen timing fit --detector region_contacts`: fit on the videos, write the file (``out``; default
    $AVGEN_HOME/weights/timing/region_contacts.safetensors, or with a run RUN/detector.safetensors and the run's
    detector.json naming it); the line to print."""
    from avgen import write_json

    from avgen_timing.commands import RUN_DETECTOR, RUN_HEAD, _bar

    with _bar() as (bar, task):
        bar.update(task, description="motion statistics and contacts", total=len(videos))
        samples = video_samples(videos, labels, lambda: bar.advance(task))
    model = fit_model(samples, epochs=epochs, seed=seed)
    sources = sorted({s[3] for s in samples.values()})
    info = {"videos": len(videos), "labels": sources, "epochs": epochs, "seed": seed,
            **({"run": run_dir.name} if run_dir is not None else {"root": roots})}
    if run_dir is not None:
        path = save_model(model, out or run_dir / RUN_HEAD, info)
        inside = path.resolve().is_relative_to(run_dir.resolve())
        weights = str(path.resolve().relative_to(run_dir.resolve())) if inside else str(path.resolve())
        write_json(run_dir / RUN_DETECTOR, {"detector": "region_contacts", "params": {"weights": weights},
                                            "trained_on": info})
    else:
        path = save_model(model, out or default_weights(), info)
    r = model.report
    contacts = sum(len(s[2]) for s in samples.values())
    why = (f"; head cross-validated F1 {r['head_cv_f1']:.3f} vs prior {r['prior_f1']:.3f}" if "head_cv_f1" in r
           else f"; {r.get('why', '')}")
    return (f"{path}: region_contacts fitted on {len(videos)} videos ({contacts} contacts from {' and '.join(sources)} "
            f"times): keeps the {model.mode} at threshold {model.threshold:g}{why}")
