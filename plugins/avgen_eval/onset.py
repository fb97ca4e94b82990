"""Onset metrics (as CondFoleyGen reports them): do the generated hits happen when the real ones do?

Onsets are found by spectral flux on a log-mel spectrogram with peak picking, with the same
settings for real and generated audio. Per clip, generated onsets are thinned by
non-maximum suppression, then matched one-to-one to real onsets within a tolerance window.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torchaudio.functional as AF
from pydantic import BaseModel, ConfigDict, Field

from avgen import BuildContext, EvalContext, Metric

log = logging.getLogger("avgen.eval.onset")
DIGITAL_SILENCE = 1e-4  # |sample| at or below this (-80 dBFS) before a recording's first sound is not sound


class OnsetParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    window: float = Field(default=2048 / 22050, gt=0, le=10.0, description="STFT window of the onset envelope (s); librosa's 2048 samples at 22 050 Hz")
    hop: float = Field(default=512 / 22050, gt=0, le=10.0, description="STFT hop of the onset envelope (s); librosa's 512 samples at 22 050 Hz")
    n_mels: int = Field(default=128, ge=1, le=4096, description="mel bands the spectral flux is averaged over")
    top_db: float = Field(default=80.0, gt=0, description="log-mel floor below the clip's maximum (dB)")
    min_strength: float = Field(
        default=1.0, ge=0,
        description="the envelope is scaled by max(its peak, this) (dB of mean rise): a clip whose sound never rises "
        "this much (silence, a steady tone) has no onset instead of amplified numerical noise",
    )
    delta: float = Field(default=0.3, ge=0, description="peak threshold above the local mean of the normalized envelope (CondFoleyGen: 0.3)")
    pre_max: float = Field(default=0.03, ge=0, description="a peak is the maximum of the envelope this far back (s)")
    post_max: float = Field(default=0.0, ge=0, description="... and this far ahead (s)")
    pre_avg: float = Field(default=0.10, ge=0, description="local mean window before a peak (s)")
    post_avg: float = Field(default=0.10, ge=0, description="local mean window after a peak (s)")
    wait: float = Field(default=0.03, ge=0, description="minimum gap between two detected onsets (s)")
    tolerance: float = Field(default=0.1, gt=0, description="a generated onset matches a real one closer than this (s)")
    nms_window: float = Field(default=0.05, ge=0, description="non-maximum suppression window on generated onsets (s)")
    confidence_window: float = Field(default=0.05, ge=0, description="confidence = peak normalized |wave| within +- this (s)")
    misses_in_ranking: bool = Field(
        default=True,
        description="CondFoleyGen's AP: a missed real onset enters the ranking with confidence 0; "
        "false gives detection AP where misses are never recalled",
    )


# ---------------------------------------------------------------- detection


def frame_sizes(p: OnsetParams, sample_rate: int) -> tuple[int, int]:
    """(n_fft, hop) in samples at this sample rate."""
    return max(16, round(p.window * sample_rate)), max(1, round(p.hop * sample_rate))


def onset_envelope(waves: torch.Tensor, sample_rate: int, p: OnsetParams) -> torch.Tensor:
    """Spectral flux [B, F]: mean over mel bands of the rise of the log-mel spectrogram, per frame.

    Frame f is aligned with sample f * hop (shifted by n_fft / 2 to undo the centred window
    seeing an onset half a window early).
    """
    waves = waves.float()
    n_fft, hop = frame_sizes(p, sample_rate)
    window = torch.hann_window(n_fft, device=waves.device)
    if waves.shape[-1] <= n_fft // 2:  # reflect padding needs a longer signal
        waves = torch.nn.functional.pad(waves, (0, n_fft // 2 + 1 - waves.shape[-1]))
    spec = torch.stft(waves, n_fft, hop, window=window, center=True, pad_mode="constant", return_complex=True)
    power = spec.abs().pow(2)  # [B, n_fft/2+1, F]
    fbank = AF.melscale_fbanks(n_fft // 2 + 1, 0.0, sample_rate / 2, p.n_mels, sample_rate, norm="slaney", mel_scale="slaney")
    mel = torch.einsum("bkf,km->bmf", power, fbank.to(power.device))
    db = 10.0 * torch.log10(mel.clamp_min(1e-10))
    db = torch.maximum(db, db.amax(dim=(1, 2), keepdim=True) - p.top_db)
    flux = (db[:, :, 1:] - db[:, :, :-1]).clamp_min(0).mean(dim=1)  # [B, F-1], rise into frame f+1
    shift = 1 + n_fft // (2 * hop)
    env = torch.nn.functional.pad(flux, (shift, 0))[:, : db.shape[-1]]
    return env


def peak_pick(env: np.ndarray, pre_max: int, post_max: int, pre_avg: int, post_avg: int, delta: float, wait: int) -> np.ndarray:
    """Frames n with env[n] the maximum of env[n-pre_max : n+post_max+1], at least delta above
    the mean of env[n-pre_avg : n+post_avg+1], and more than wait frames after the previous peak."""
    peaks: list[int] = []
    last = -np.inf
    n = len(env)
    for i in range(n):
        lo, hi = max(0, i - pre_max), min(n, i + post_max + 1)
        if env[i] < env[lo:hi].max():
            continue
        lo, hi = max(0, i - pre_avg), min(n, i + post_avg + 1)
        if env[i] < env[lo:hi].mean() + delta:
            continue
        if i - last > wait:
            peaks.append(i)
            last = i
    return np.asarray(peaks, dtype=np.int64)


def first_reliable_frame(n_fft: int, hop: int) -> int:
    """First envelope frame whose flux compares two STFT windows that lie wholly inside the clip.

    Earlier frames see the zero padding before the clip, so any clip that starts with sound
    would get a spurious onset there (librosa's onset_detect reports one at n_fft/2 + hop).
    """
    first_full_window = -(-n_fft // (2 * hop))  # ceil(n_fft / (2 hop))
    return first_full_window + 1 + n_fft // (2 * hop)


def detect_onsets(waves: torch.Tensor, sample_rate: int, p: OnsetParams) -> list[np.ndarray]:
    """Onset positions in samples, one int array per clip.

    Peaks are picked on the reliable part of the envelope (see first_reliable_frame),
    normalized to [0, 1] per clip as librosa.onset.onset_detect does (but see min_strength).
    """
    n_fft, hop = frame_sizes(p, sample_rate)
    first = first_reliable_frame(n_fft, hop)
    env = onset_envelope(waves, sample_rate, p).cpu().double().numpy()[:, first:]
    frames = lambda seconds: int(seconds * sample_rate // hop)  # noqa: E731
    out = []
    for e in env:
        if e.size == 0:
            out.append(np.zeros(0, dtype=np.int64))
            continue
        e = e - e.min()
        e = e / max(e.max(), p.min_strength, 1e-12)
        peaks = peak_pick(e, frames(p.pre_max), frames(p.post_max), frames(p.pre_avg), frames(p.post_avg), p.delta, frames(p.wait))
        out.append(np.minimum((peaks + first) * hop, waves.shape[-1] - 1))
    return out


# ---------------------------------------------------------------- matching and scores


def onset_confidence(wave: np.ndarray, onsets: np.ndarray, half_window: int) -> np.ndarray:
    """Peak of |wave| (min-max normalized over the clip) within +- half_window of each onset."""
    mag = np.abs(wave.astype(np.float64))
    span = mag.max() - mag.min()
    mag = (mag - mag.min()) / span if span > 0 else np.zeros_like(mag)
    return np.array([mag[max(0, o - half_window) : o + half_window + 1].max() for o in onsets], dtype=np.float64)


def onset_nms(onsets: np.ndarray, confidence: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the most confident onsets, dropping others closer than window samples; sorted by time."""
    keep: list[int] = []
    for i in np.argsort(-confidence, kind="stable"):
        if all(abs(int(onsets[i]) - int(onsets[j])) >= window for j in keep):
            keep.append(i)
    keep.sort(key=lambda i: onsets[i])
    return onsets[keep], confidence[keep]


def average_precision(y_true: np.ndarray, scores: np.ndarray, num_positives: int | None = None) -> float:
    """Area under the step precision-recall curve: sum over thresholds of (R_n - R_{n-1}) P_n.

    Recall is over ``num_positives`` (default: the positives in y_true; more when some
    positives were never ranked).
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    positives = y_true.sum() if num_positives is None else float(num_positives)
    if positives == 0 or y_true.sum() == 0:
        return 0.0
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    s, y = np.asarray(scores, dtype=np.float64)[order], y_true[order]
    tp, fp = np.cumsum(y), np.cumsum(1 - y)
    last_of_tie = np.r_[np.diff(s) != 0, True]  # one threshold per distinct score
    tp, fp = tp[last_of_tie], fp[last_of_tie]
    precision, recall = tp / (tp + fp), tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


@dataclass
class ClipScore:
    hits: int
    real: int
    generated: int
    ap: float


def match_clip(real: np.ndarray, generated: np.ndarray, confidence: np.ndarray, tolerance: int, misses_in_ranking: bool) -> ClipScore:
    """Match real onsets (in time order) to the most confident unused generated onset within tolerance."""
    unused = list(range(len(generated)))
    labels: list[int] = []
    scores: list[float] = []
    hits = 0
    for onset in real:
        near = [j for j in unused if abs(int(generated[j]) - int(onset)) < tolerance]
        if not near:
            if misses_in_ranking:
                labels.append(1)
                scores.append(0.0)
            continue
        best = max(near, key=lambda j: confidence[j])
        unused.remove(best)
        hits += 1
        labels.append(1)
        scores.append(float(confidence[best]))
    for j in unused:
        labels.append(0)
        scores.append(float(confidence[j]))
    ap = average_precision(np.array(labels), np.array(scores), num_positives=len(real))
    return ClipScore(hits=hits, real=len(real), generated=len(generated), ap=ap)


def f1(hits: int, real: int, generated: int) -> float:
    """Harmonic mean of precision hits/generated and recall hits/real (0 without hits)."""
    if hits == 0:
        return 0.0
    precision, recall = hits / generated, hits / real
    return 2 * precision * recall / (precision + recall)


def compare_onsets(real_waves: torch.Tensor, gen_waves: torch.Tensor, sample_rate: int, p: OnsetParams,
                   real_onsets: list[np.ndarray] | None = None) -> dict[str, float]:
    """Onset count accuracy (all clips) and mean onset accuracy, AP and F1 (clips with a real onset)."""
    real_onsets = real_onsets if real_onsets is not None else detect_onsets(real_waves, sample_rate, p)
    gen_onsets = detect_onsets(gen_waves, sample_rate, p)
    gen_np = gen_waves.detach().cpu().numpy()
    count_match, acc, ap, f1s = [], [], [], []
    for i, (real, gen) in enumerate(zip(real_onsets, gen_onsets)):
        count_match.append(float(len(real) == len(gen)))
        if len(real) == 0:
            continue  # nothing to find: accuracy and AP are undefined for this clip
        conf = onset_confidence(gen_np[i], gen, int(p.confidence_window * sample_rate))
        gen, conf = onset_nms(gen, conf, int(p.nms_window * sample_rate))
        score = match_clip(real, gen, conf, int(p.tolerance * sample_rate), p.misses_in_ranking)
        acc.append(score.hits / score.real)
        ap.append(score.ap)
        f1s.append(f1(score.hits, score.real, score.generated))
    mean = lambda xs: round(float(np.mean(xs)), 6) if xs else 0.0  # noqa: E731
    return {
        "onset_count_acc": mean(count_match),
        "onset_acc": mean(acc),
        "onset_ap": mean(ap),
        "onset_f1": mean(f1s),
        "onsets_per_clip": mean([len(g) for g in gen_onsets]),
    }


class OnsetMetric(Metric):
    """The onset metric: per generated kind, onset agreement with the real test audio."""

    def __init__(self, params: OnsetParams) -> None:
        self.params = params

    def onset_times(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        """Seconds of the onsets of one mono wave (float64; empty for silence): what other plugins call to find the
        onsets of a sound (``avgen.create("metric", "onset", ...).onset_times(wave, rate)``).

        Digital silence at the start (below DIGITAL_SILENCE: an encoder's padding, a cut, a generated track's quiet
        before its first sound) is left out of the envelope, which is scaled to its largest rise: the rise out of
        silence into a recording that is already loud (a drum kit filmed mid-song) would otherwise be so large that no
        later hit counts (1 onset in 36 s of drumming). Where the sound begins after such silence is an onset."""
        if wave.size == 0 or not np.any(wave):
            return np.zeros(0)
        lead = int(np.argmax(np.abs(wave) > DIGITAL_SILENCE))
        waves = torch.from_numpy(np.ascontiguousarray(wave[lead:], dtype=np.float32))[None]
        found = detect_onsets(waves, sample_rate, self.params)[0].astype(np.float64) + lead
        if lead and (found.size == 0 or found[0] - lead > self.params.wait * sample_rate):
            found = np.concatenate([[float(lead)], found])  # the sound begins: the first frames are not searched
        return found / sample_rate

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        real_onsets = detect_onsets(ctx.real_waves, ctx.sample_rate, self.params)
        out = {"onsets_per_clip_real": round(float(np.mean([len(o) for o in real_onsets])), 6) if real_onsets else 0.0}
        if not ctx.generated:
            log.info("onset: no generated sound in this run; reporting onsets of the real audio only")
        for kind, waves in ctx.generated.items():
            scores = compare_onsets(ctx.real_waves, waves, ctx.sample_rate, self.params, real_onsets)
            out.update({f"{name}_{kind}": value for name, value in scores.items()})
        return out


def make_onset(params: OnsetParams, context: BuildContext) -> OnsetMetric:
    return OnsetMetric(params)
