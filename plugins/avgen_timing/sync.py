"""``av_sync``: does the sound happen when the picture says? Audio-video offset of each source video, on CPU.

Per test clip: the onset envelope of its sound (real, and each generated kind) is slid over the
detector's per-frame contact strength of the same video, read over the clip widened by
``max_offset`` each side, giving a covariance per lag. The curves of the clips of one source
video are summed and the lag (within +-``max_offset``) of the highest total is that video's
offset, given to each of its clips (``per = "clip"``: each clip's own curve alone). A positive
offset means the sound comes late. Reported: mean |offset| in ms and the fraction of clips
within one video frame (1 / the detector's fps), per sound.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from safetensors.torch import load_file, save_file

from avgen import (MEDIA_VERSION, BuildContext, EvalContext, Metric, cache_dir, cache_key, create,
                   get_component, kept_detector)

from avgen_timing.detector import MotionContacts
from avgen_timing.learned import LearnedContacts
from avgen_timing.regions import RegionContacts

log = logging.getLogger("avgen.timing.sync")


class SyncParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    detector: str = Field("auto", description="the detector whose contact strength is the picture's timing; 'auto': the "
                                              "run's own ([detector], fitted on its training videos), else "
                                              "motion_contacts")
    max_offset: float = Field(0.5, gt=0, le=5, description="largest audio-video offset searched (s)")
    rate: float = Field(200.0, ge=50, le=8000, description="frames per second of the onset envelope and of the offset search")
    top_db: float = Field(30.0, gt=0, description="log-energy floor below the clip's loudest frame (dB): quieter sounds and room noise make no onset")
    timeline_clips: int = Field(3, ge=0, le=50, description="test clips drawn in figures/timeline.png")
    per: Literal["video", "clip"] = Field("video", description="one offset per source video from all of its test "
                                                                "clips (video), or one per clip alone (clip)")


# ---------------------------------------------------------------- signals


def onset_envelope(wave: torch.Tensor, sample_rate: int, rate: float, top_db: float = 60.0) -> tuple[np.ndarray, float]:
    """Rise of log energy between consecutive frames of 1 / rate s: ([J], seconds per frame).

    Frame j holds samples [j hop, (j + 1) hop); envelope[j] is the rise into frame j (dB, >= 0),
    and it stands for the time (j + 0.5) hop, the frame's centre.
    """
    hop = max(1, round(sample_rate / rate))
    x = wave.detach().double().reshape(-1)
    x = torch.nn.functional.pad(x, (0, (-x.numel()) % hop)).reshape(-1, hop)
    db = 10 * torch.log10(x.square().mean(1).clamp_min(1e-12))
    db = torch.maximum(db, db.max() - top_db) if db.numel() else db
    rise = torch.cat([db.new_zeros(1), (db[1:] - db[:-1]).clamp_min(0)]) if db.numel() else db
    return rise.numpy(), hop / sample_rate


def offset_scores(envelope: np.ndarray, env_step: float, env_start: float, visual: np.ndarray, fps: float,
                  visual_start: float, max_offset: float) -> tuple[np.ndarray, np.ndarray] | None:
    """(lags [L], covariance of envelope(t) and visual(t - lag) [L]) for lags in [-max_offset, max_offset] (steps of
    env_step), the envelope scaled to unit norm; None when either signal is flat. Times: envelope frame j at
    env_start + (j + 0.5) env_step, visual frame k at visual_start + k / fps (linear interpolation; zero outside).

    Covariance, not correlation: normalising by the visual window of each lag would favour lags
    whose window is nearly flat.
    """
    a = envelope - envelope.mean()
    if not np.any(a) or visual.size < 2 or not np.any(visual != visual[0]):
        return None
    times = env_start + (np.arange(envelope.size) + 0.5) * env_step
    steps = int(round(max_offset / env_step))
    lags = np.arange(-steps, steps + 1) * env_step
    vis_times = visual_start + np.arange(visual.size) / fps
    shifted = np.interp(times[None, :] - lags[:, None], vis_times, visual, left=0.0, right=0.0)  # [lags, J]
    return lags, shifted @ (a / np.linalg.norm(a))


def best_offset(envelope: np.ndarray, env_step: float, env_start: float, visual: np.ndarray, fps: float,
                visual_start: float, max_offset: float) -> float | None:
    """The lag in [-max_offset, max_offset] maximising the covariance of envelope(t) and visual(t - lag) (see
    offset_scores); None when either signal is flat."""
    found = offset_scores(envelope, env_step, env_start, visual, fps, visual_start, max_offset)
    if found is None:
        return None
    lags, score = found
    return float(lags[int(np.argmax(score))])  # ties: the most negative lag, the same on every machine


NULL_DRAWS = 40  # soundtracks moved by random amounts, the unrelated sound a real offset's peak must beat


def tested_offset(envelope: np.ndarray, env_step: float, visual: np.ndarray, fps: float, max_offset: float,
                  ) -> tuple[float | None, bool | None]:
    """(best lag, whether it stands out) of a whole video: the lag as ``best_offset``; it stands out when its
    peak over the curve's median beats that of every one of NULL_DRAWS copies of the envelope moved circularly
    by at least max_offset + 1 s (the same sound, no longer aligned with the picture). None when the video is
    too short to move its sound that far; (None, None) for a flat signal. Seeded: the same on every machine."""
    found = offset_scores(envelope, env_step, 0.0, visual, fps, 0.0, max_offset)
    if found is None:
        return None, None
    lags, score = found
    best = float(lags[int(np.argmax(score))])
    gap = int(np.ceil((max_offset + 1.0) / env_step))
    if envelope.size < 2 * gap + 1:
        return best, None
    height = float(score.max() - np.median(score))
    moves = np.random.default_rng(0).integers(gap, envelope.size - gap + 1, NULL_DRAWS)
    null = [offset_scores(np.roll(envelope, int(k)), env_step, 0.0, visual, fps, 0.0, max_offset) for k in moves]
    return best, all(n is None or height > float(n[1].max() - np.median(n[1])) for n in null)


def pooled_offsets(curves: list[tuple[np.ndarray, np.ndarray] | None], groups: list[str]) -> list[float | None]:
    """One offset per source video, from the sum of its clips' covariance curves (a recording has one audio-video
    offset; each clip alone sees a few contacts and a +-max_offset window that may hold the neighbouring ones),
    given to each of its clips; None for a clip whose curve is None."""
    total: dict[str, np.ndarray] = {}
    for curve, group in zip(curves, groups):
        if curve is not None:
            total[group] = total[group] + curve[1] if group in total else curve[1].copy()
    return [None if curve is None else float(curve[0][int(np.argmax(total[group]))])
            for curve, group in zip(curves, groups)]


# ---------------------------------------------------------------- the metric


@dataclasses.dataclass
class ClipVisual:
    start: float  # seconds (in the source video) of frame 0
    fps: float
    strength: np.ndarray  # [K] the detector's contact strength
    events: np.ndarray  # [E, 2] detected contacts (seconds in the source video, confidence)
    energy: np.ndarray | None  # [K] motion energy, for detectors that have it


VERSION = "1"  # of the cached visual curves
FALLBACK = "motion_contacts"  # needs no training, and its contact is the frame where motion stops (region_contacts'
# peaks come earlier on a slow approach, which would bias an offset)


class SyncMetric(Metric):
    def __init__(self, params: SyncParams) -> None:
        self.p = params
        self.name = params.detector
        self.detector: Any = None
        if params.detector != "auto":
            self.component = get_component("detector", params.detector)
            self.detector = create("detector", params.detector)

    def resolve(self, ctx: EvalContext) -> None:
        """detector = "auto": the detector the run keeps (fitted on its training videos), else motion_contacts."""
        if self.detector is not None:
            return
        kept = kept_detector(ctx.run_dir) if ctx.run_dir is not None else None
        self.detector, self.name = kept if kept is not None else (create("detector", FALLBACK), FALLBACK)
        self.component = get_component("detector", self.name)

    def visuals(self, ctx: EvalContext) -> list[ClipVisual]:
        """Every test clip's ClipVisual, from the cache when this detector saw these clips before (the variants of
        a recipe share their test clips)."""
        from avgen import make_each

        self.resolve(ctx)
        settings = self.detector_settings()
        paths = [cache_dir() / "timing" / "clips" / (cache_key(
            "av_sync", VERSION, self.name, self.component.version, settings, self.p.max_offset,
            (c.id, c.start, c.duration, str(c.video), c.fingerprint), MEDIA_VERSION) + ".safetensors")
            for c in ctx.test_clips]
        # one file per clip, each made by one process: the variants of a recipe evaluating side by side share them out
        make_each(paths, lambda i, tmp: save_file(pack([self.visual(ctx, ctx.test_clips[i])]), str(tmp)))
        visuals = []
        for clip, path in zip(ctx.test_clips, paths):
            try:
                visuals.extend(unpack(load_file(str(path)), 1, self.detector.fps))
            except Exception:  # a damaged entry is recomputed  # noqa: BLE001
                log.info("av_sync: %s is unreadable; recomputing it", path)
                visuals.append(self.visual(ctx, clip))
        return visuals

    def detector_settings(self) -> dict[str, Any]:
        """What the curves depend on besides the detector's name and version (its params; a trained head's weights)."""
        if isinstance(self.detector, MotionContacts):
            return self.detector.p.model_dump()
        if isinstance(self.detector, LearnedContacts):
            return {**self.detector.p.model_dump(), "head": weights_digest(self.detector.trained_head())}
        if isinstance(self.detector, RegionContacts):
            fitted = self.detector.fitted()
            return {**self.detector.p.model_dump(), "mode": fitted.mode, "threshold": fitted.threshold,
                    "head": weights_digest(fitted.head) if fitted.head is not None else None}
        return {}

    def visual(self, ctx: EvalContext, clip: Any) -> ClipVisual:
        """The detector's view of the clip widened by max_offset (and one frame) each side."""
        margin = self.p.max_offset + 1.0 / self.detector.fps
        lo = max(0.0, clip.start - margin)
        wide = dataclasses.replace(clip, start=lo, duration=clip.start + clip.duration + margin - lo)
        frames = ctx.dataset.load_frames(wide, self.detector.fps, self.detector.input_size)
        strength, events = self.detector.curves(frames)
        events = events.double().numpy().reshape(-1, 2)
        events[:, 0] += lo
        energy = self.detector.energy(frames).double().numpy() if isinstance(self.detector, MotionContacts) else None
        return ClipVisual(lo, self.detector.fps, strength.double().numpy(), events, energy)

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        if ctx.test_clips is None or ctx.dataset is None:
            log.info("av_sync: the evaluation context has no test clips or dataset to read frames from; nothing to measure")
            return {}
        sounds = {"real": ctx.real_waves, **ctx.generated}
        visuals = self.visuals(ctx)
        frame = 1.0 / self.detector.fps
        out: dict[str, float] = {}
        offsets: dict[str, list[float | None]] = {}
        groups = [clip.group or str(clip.video) for clip in ctx.test_clips]
        for kind, waves in sounds.items():
            curves = []
            for clip, vis, wave in zip(ctx.test_clips, visuals, waves):
                env, step = onset_envelope(wave, ctx.sample_rate, self.p.rate, self.p.top_db)
                curves.append(offset_scores(env, step, clip.start, vis.strength, self.detector.fps, vis.start,
                                            self.p.max_offset))
            found = pooled_offsets(curves, groups) if self.p.per == "video" else \
                [None if c is None else float(c[0][int(np.argmax(c[1]))]) for c in curves]
            offsets[kind] = found
            valid = np.array([abs(o) for o in found if o is not None])
            out[f"sync_offset_ms_{kind}"] = round(float(valid.mean() * 1000), 3) if valid.size else float("nan")
            out[f"sync_within_frame_{kind}"] = round(float((valid <= frame + 1e-9).mean()), 6) if valid.size else float("nan")
            out[f"sync_clips_{kind}"] = int(valid.size)
        if self.p.timeline_clips and ctx.run_dir is not None:
            from avgen_timing.timeline import save_timeline

            save_timeline(ctx.run_dir / "figures" / "timeline.png", ctx, visuals[: self.p.timeline_clips], sounds,
                          offsets, self.p)
        return out


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state (names and bytes): what a fitted head contributes to a cache key."""
    digest = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        digest.update(name.encode() + value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def pack(visuals: list[ClipVisual]) -> dict[str, torch.Tensor]:
    out = {}
    for i, v in enumerate(visuals):
        out[f"{i}.start"] = torch.tensor([v.start], dtype=torch.float64)
        out[f"{i}.strength"] = torch.from_numpy(np.ascontiguousarray(v.strength))
        out[f"{i}.events"] = torch.from_numpy(np.ascontiguousarray(v.events)).reshape(-1, 2)
        if v.energy is not None:
            out[f"{i}.energy"] = torch.from_numpy(np.ascontiguousarray(v.energy))
    return out


def unpack(tensors: dict[str, torch.Tensor], count: int, fps: float) -> list[ClipVisual]:
    return [ClipVisual(float(tensors[f"{i}.start"][0]), fps, tensors[f"{i}.strength"].numpy(),
                       tensors[f"{i}.events"].numpy(),
                       tensors[f"{i}.energy"].numpy() if f"{i}.energy" in tensors else None) for i in range(count)]


def make_sync(params: SyncParams, context: BuildContext) -> SyncMetric:
    return SyncMetric(params)
