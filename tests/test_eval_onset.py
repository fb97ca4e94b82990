"""Onset detection and the CondFoleyGen-style onset metrics on clicks at known times."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

import avgen
from avgen import EvalContext
from avgen_eval.onset import OnsetParams, average_precision, detect_onsets, match_clip, onset_envelope, onset_nms

RATE = 22050
HOP = 512


def clicks(times: list[float], seconds: float = 1.0, seed: int = 0, gain: float = 1.0) -> np.ndarray:
    """Short decaying noise bursts (3 ms) at the given times over faint background noise."""
    rng = np.random.default_rng(seed)
    wave = 1e-4 * rng.standard_normal(int(seconds * RATE))
    for t in times:
        start = int(t * RATE)
        wave[start : start + 64] += gain * rng.standard_normal(64) * np.exp(-np.arange(64) / 16)
    return wave.astype(np.float32)


def test_envelope_matches_librosa_onset_strength():
    wave = clicks([0.1, 0.4, 0.75])
    ours = onset_envelope(torch.from_numpy(wave)[None], RATE, OnsetParams())[0].numpy()
    ref = librosa.onset.onset_strength(y=wave.astype(np.float64), sr=RATE, n_fft=2048, hop_length=HOP)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-3 * ref.max())


def test_clicks_found_at_their_times():
    times = [0.1, 0.4, 0.75]
    waves = torch.from_numpy(np.stack([clicks(times, seed=s) for s in range(3)] + [clicks([], seed=9)]))
    found = detect_onsets(waves, RATE, OnsetParams())
    for onsets in found[:3]:
        assert len(onsets) == 3
        # the frame grid quantizes to one hop (23 ms); detections sit within one hop of the truth
        assert np.all(np.abs(onsets / RATE - np.array(times)) <= 1.5 * HOP / RATE), onsets / RATE
    np.testing.assert_array_equal(found[0], librosa.onset.onset_detect(y=waves[0].double().numpy(), sr=RATE, units="samples", delta=0.3))


def test_no_onset_at_the_start_of_a_clip_that_starts_with_sound():
    # librosa reports an onset at n_fft/2 + hop samples for any clip starting with sound; we do not
    steady = [clicks([], seed=s) for s in range(4)]
    steady.append((0.3 * np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE)).astype(np.float32))
    assert librosa.onset.onset_detect(y=steady[-1].astype(np.float64), sr=RATE, units="samples", delta=0.3).tolist() == [1536]
    found = detect_onsets(torch.from_numpy(np.stack(steady)), RATE, OnsetParams())
    assert all(len(o) == 0 or o.min() > 1536 for o in found)
    assert len(found[-1]) == 0  # a steady tone has no onset at all
    # an onset 0.1 s into the clip (the datasets' default hit offset) is still found
    early = detect_onsets(torch.from_numpy(clicks([0.1]))[None], RATE, OnsetParams())[0]
    assert len(early) == 1 and abs(early[0] / RATE - 0.1) <= 1.5 * HOP / RATE


def test_average_precision_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 2, 30)
        y[0] = 1
        scores = rng.integers(0, 6, 30) / 5.0  # many exact ties
        assert average_precision(y, scores) == pytest.approx(average_precision_score(y, scores), abs=1e-12)


def test_match_clip_by_hand():
    real = np.array([1000, 5000, 9000])
    generated = np.array([1100, 5200, 20000])
    confidence = np.array([0.9, 0.5, 0.7])
    score = match_clip(real, generated, confidence, tolerance=500, misses_in_ranking=True)
    assert (score.hits, score.real, score.generated) == (2, 3, 3)
    # ranking 0.9 (hit), 0.7 (false), 0.5 (hit), 0.0 (miss): AP = 1/3 * 1 + 1/3 * 2/3 + 1/3 * 3/4
    assert score.ap == pytest.approx(1 / 3 + 2 / 9 + 1 / 4)
    strict = match_clip(real, generated, confidence, tolerance=500, misses_in_ranking=False)
    assert strict.ap == pytest.approx(1 / 3 + 2 / 9)
    # the more confident of two candidates in the window is matched
    two = match_clip(np.array([1000]), np.array([900, 1100]), np.array([0.2, 0.8]), tolerance=500, misses_in_ranking=True)
    assert two.hits == 1 and two.ap == pytest.approx(1.0)


def test_nms_keeps_the_most_confident():
    onsets, conf = onset_nms(np.array([100, 300, 2000, 2400]), np.array([0.4, 0.9, 0.5, 0.1]), window=500)
    assert onsets.tolist() == [300, 2000] and conf.tolist() == [0.9, 0.5]


def context(real: np.ndarray, generated: dict[str, np.ndarray], tmp_path) -> EvalContext:
    n = len(real)
    return EvalContext(
        run_dir=tmp_path, sample_rate=RATE, class_names=["x"], test_ids=[str(i) for i in range(n)],
        test_labels=torch.zeros(n, dtype=torch.long), real_waves=torch.from_numpy(real),
        generated={k: torch.from_numpy(v) for k, v in generated.items()},
    )


def test_onset_metric_on_click_trains(tmp_path):
    real_times = [[0.1, 0.4, 0.75], [0.2, 0.6], [0.3]]
    real = np.stack([clicks(t, seed=i) for i, t in enumerate(real_times)])
    shifted = np.stack([clicks([x + 0.03 for x in t], seed=10 + i) for i, t in enumerate(real_times)])  # within 0.1 s
    wrong = np.stack([clicks([0.9], seed=20 + i) for i in range(3)])  # one click at 0.9 s, more than 0.1 s from every real one
    silent = np.zeros_like(real)  # digital silence (faint noise alone has onsets: the envelope is normalized per clip)
    metric = avgen.create("metric", "onset")
    result = metric.compute(context(real, {"raw": shifted, "exemplar": wrong, "silent": silent}, tmp_path))

    assert result["onsets_per_clip_real"] == pytest.approx(2.0)
    assert result["onset_count_acc_raw"] == 1.0
    assert result["onset_acc_raw"] == 1.0 and result["onset_ap_raw"] == 1.0 and result["onset_f1_raw"] == 1.0
    # one wrong click per clip: counts match only for the one-click clip; nothing is within tolerance
    assert result["onset_count_acc_exemplar"] == pytest.approx(1 / 3, abs=1e-6)
    assert result["onset_acc_exemplar"] == 0.0 and result["onset_f1_exemplar"] == 0.0
    # CondFoleyGen's AP ranks misses at confidence 0 after a false onset: per clip AP = precision at full recall
    expected_ap = np.mean([len(t) / (len(t) + 1) for t in real_times])
    assert result["onset_ap_exemplar"] == pytest.approx(expected_ap, abs=1e-6)
    # silence: no detection, so no hit; CondFoleyGen's AP then counts every miss as recalled at score 0 (AP 1)
    assert result["onset_acc_silent"] == 0.0 and result["onsets_per_clip_silent"] == 0.0
    assert result["onset_ap_silent"] == 1.0
    strict = avgen.create("metric", "onset", misses_in_ranking=False).compute(context(real, {"silent": silent}, tmp_path))
    assert strict["onset_ap_silent"] == 0.0


def test_real_only_without_generated(tmp_path):
    real = np.stack([clicks([0.2, 0.5]), clicks([0.3])])
    assert avgen.create("metric", "onset").compute(context(real, {}, tmp_path)) == {"onsets_per_clip_real": 1.5}


def test_onset_times_of_a_loud_recording_that_starts_after_digital_silence_count_every_hit():
    """A drum kit filmed mid-song: 50 ms of encoder padding (zeros), then loud playing with a hit every 0.25 s. The
    rise out of the silence is the largest of the file; it must not hide the hits (it left 1 onset of 16)."""
    import avgen

    rate = 22050
    rng = np.random.default_rng(0)
    wave = np.zeros(int(4.05 * rate), np.float32)
    wave[int(0.05 * rate):] = rng.normal(0, 0.05, wave.size - int(0.05 * rate))  # the song already playing
    hits = np.arange(0.3, 4.0, 0.25)
    for t in hits:
        k = int(t * rate)
        wave[k:k + 2000] += (0.6 * np.exp(-np.arange(2000) / 300) * rng.normal(0, 1, 2000)).astype(np.float32)
    metric = avgen.create("metric", "onset", window=512 / rate, hop=128 / rate, n_mels=64)
    found = metric.onset_times(wave, rate)
    start = int(0.05 * rate)
    assert found[0] == start / rate  # where the sound begins
    matched = sum(bool(np.any(np.abs(found[1:] - t) <= 0.05)) for t in hits)
    assert matched == len(hits) and len(found) == len(hits) + 1, (len(found), matched)
    assert metric.onset_times(wave[start:], rate) + start / rate == pytest.approx(found[1:], abs=1e-9)  # the same hits
