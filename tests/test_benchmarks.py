"""Performance regressions: each benchmark, run small, must stay above half of its target (the number in
each test's name or docstring).

Slow (minutes) and meaningful only on a quiet machine: `python -m pytest -m slow tests/test_benchmarks.py`.
Each benchmark appends its ratios as JSON lines to $AVGEN_BENCH_JSON (benchmarks/_timing.record).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

pytestmark = pytest.mark.slow


def run_bench(tmp_path: Path, script: str, *args: str, timeout: float = 1800) -> dict[str, float]:
    """Run benchmarks/SCRIPT ARGS; the values it recorded."""
    out = tmp_path / "bench.jsonl"
    env = {**os.environ, "AVGEN_BENCH_JSON": str(out)}
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], cwd=BENCHMARKS, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stdout)
    values: dict[str, float] = {}
    for line in out.read_text().splitlines():
        values.update({k: v for k, v in json.loads(line).items() if k != "bench"})
    return values


def test_stft_griffin_lim_stays_above_half_of_5x_librosa_on_one_thread(tmp_path):
    """Encode + 32-iteration Griffin-Lim against librosa clip by clip, both timed in the same run on one thread
    (target 5x); the default torch.fft encode and nnAudio's (version 1's default, which older runs keep)."""
    values = run_bench(tmp_path, "bench_audio.py", "--clips", "128", "--repeats", "2", "--threads", "1")
    assert values["librosa_loop_ratio"] >= 2.5, values
    assert values["nnaudio_encode_librosa_loop_ratio"] >= 2.5, values


def test_resnet50_features_stay_above_half_of_50_percent_of_matmul(tmp_path):
    values = run_bench(tmp_path, "bench_featurize.py", "--models", "resnet50", "--repeats", "2")
    assert values["resnet50_fraction_of_matmul"] >= 0.25, values


def test_soundnet_forward_backward_stays_under_twice_0_1_s(tmp_path):
    values = run_bench(tmp_path, "bench_soundnet.py", "--repeats", "3")
    assert values["forward_backward_seconds"] <= 0.2, values


def test_generate_real_time_factor_stays_under_twice_0_1(tmp_path):
    values = run_bench(tmp_path, "bench_generate.py", "--repeats", "2")
    assert values["raw_rtf"] <= 0.2 and values["exemplar_rtf"] <= 0.2, values


def test_exact_retrieval_at_100k_stays_within_twice_the_matmul_limit(tmp_path):
    """Exact search is bound by its matmul (target: < 10 ms/query at 1 M); at 100 k it must stay near that bound."""
    values = run_bench(tmp_path, "bench_retrieval.py", "--sizes", "100000", "--backend", "exact")
    assert values["exact_fp32_100000_ms_per_query"] <= 2 * values["exact_limit_100000_ms_per_query"], values


def test_generate_on_720p_footage_stays_within_twice_its_target_and_loads_in_2_s(tmp_path):
    """Target: the whole `avgen generate` on 10 s of 720p H.264 <= 0.25 x 10 + 1.5 s; loading the run < 1 s."""
    values = run_bench(tmp_path, "bench_realvideo.py", "--sizes", "720p", "--repeats", "1",
                       "--cache", str(tmp_path / "videos"))
    assert values["720p_target_ratio"] >= 0.5 and values["720p_load_seconds"] <= 2.0, values


def test_long_video_memory_stays_flat_and_real_time_factor_within_twice_0_3(tmp_path):
    """Target: peak memory does not grow with the video's length (here 3 min against 30 s, at most half the
    10-against-1-minute allowance of 100 MB) and the whole command runs faster than 0.6 x real time."""
    values = run_bench(tmp_path, "bench_longvideo.py", "--minutes", "0.5", "3", "--size", "640x360",
                       "--cache", str(tmp_path / "videos"))
    assert values["rss_growth_mb"] <= 50 and values["long_rtf"] <= 0.6, values


def test_generating_by_events_stays_within_twice_its_real_time_target(tmp_path):
    """Target: the whole `avgen generate --mode events` on a 10-minute 720p video with a few dozen contacts at a
    real-time factor <= 0.15 on 2 cores; here 3 minutes at 640x360 within twice that, memory flat as in windows."""
    values = run_bench(tmp_path, "bench_longvideo.py", "--mode", "events", "--minutes", "0.5", "3", "--size", "640x360",
                       "--cache", str(tmp_path / "videos"))
    assert values["events_long_rtf"] <= 0.3 and values["events_rss_growth_mb"] <= 50, values


def _native_bf16() -> tuple[bool, str]:
    import torch

    from avgen._core.precision import native_bf16

    return native_bf16(torch.device("cpu"))


@pytest.mark.skipif(not _native_bf16()[0], reason=f"no native bf16 on this CPU ({_native_bf16()[1]})")
def test_featurize_auto_precision_stays_at_least_as_fast_as_fp32(tmp_path):
    """EfficientNet-Lite0 (ImageNet weights from its package) in batches of 32: auto picks bf16 here, measured 2-2.8x
    fp32; half: 1.0x. (At featurize's own batch of 4 the frozen fp32 network is about as fast as bf16, 0.99-1.08x:
    docs/benchmarks.md.)"""
    values = run_bench(tmp_path, "bench_featurize.py", "--models", "efficientnet_lite0", "--repeats", "3", "--batch", "32")
    assert values["efficientnet_lite0_auto_speedup"] >= 1.0, values


def test_pocan_step_stays_above_half_of_the_1_5x_target(tmp_path):
    """The whole POCAN step at GHD shapes against the plain SoundNet in the same run: target 1.5x, half of its gain 1.25x."""
    values = run_bench(tmp_path, "bench_train.py", "--repeats", "7", "--threads", "1")
    assert values["step_speedup"] >= 1.25, values
    assert values["auto_loss_rel_diff"] <= 0.01, values


def test_one_competing_process_slows_a_fit_epoch_less_than_twice_the_2_5x_target(tmp_path):
    """avgen's thread choice beside one busy torch process: target < 2.5x slowdown, half of it: < 5x."""
    values = run_bench(tmp_path, "bench_contention.py", "--settings", "avgen", "--repeats", "1")
    assert values["pocan_avgen_slowdown"] < 5 and values["can_avgen_slowdown"] < 5, values
