"""[featurize] precision: bf16 only where native and the first batch agrees with fp32; recorded; in the cache key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import avgen._core.precision as precision
from avgen._core.precision import MIN_COSINE, PrecisionChoice, check_bf16, choose_precision, min_row_cosine, native_bf16
from conftest import EXAMPLE, avgen_in_process
from test_generate import wide_consoles

CPU = torch.device("cpu")


def test_cpu_flags_decide_native_bf16(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 avx512_vnni\n")
    assert precision.cpu_flags(info) == {"fpu", "sse", "avx512f", "avx512_bf16", "avx512_vnni"}
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert native_bf16(CPU) == (True, "CPU has avx512_bf16")
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "amx_bf16", "amx_tile"})
    assert native_bf16(CPU)[0]
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "fma"})
    assert native_bf16(CPU) == (False, "CPU has neither avx512_bf16 nor amx_bf16")
    monkeypatch.setattr(precision, "cpu_flags", set)  # no /proc/cpuinfo (macOS, Windows): not assumed
    assert not native_bf16(CPU)[0]


class RoundingEncoder:
    """A fake encoder whose output under bf16 autocast is its fp32 output plus a chosen relative error."""

    def __init__(self, error: float) -> None:
        self.error = error

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        features = frames.float().flatten(1)[:, :16] + 1.0
        if torch.is_autocast_enabled("cpu"):
            features = features + self.error * features.norm(dim=1, keepdim=True) * torch.linspace(-1, 1, 16)
        return features


@pytest.fixture
def frames() -> torch.Tensor:
    return torch.randint(0, 256, (6, 8, 8, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_auto_uses_bf16_only_where_native_and_the_check_passes(monkeypatch, frames):
    near, far = RoundingEncoder(1e-4), RoundingEncoder(0.2)
    monkeypatch.setattr(precision, "native_bf16", lambda device: (True, "CPU has avx512_bf16"))
    choice = choose_precision("auto", CPU, lambda: check_bf16(lambda: near.encode(frames), CPU))
    assert choice.precision == "bf16" and choice.value >= MIN_COSINE
    choice = choose_precision("auto", CPU, lambda: check_bf16(lambda: far.encode(frames), CPU))
    assert choice.precision == "fp32" and choice.value < MIN_COSINE and "differs" in choice.reason
    assert choose_precision("auto", CPU, lambda: None).precision == "fp32"  # nothing readable to check on
    assert choose_precision("fp32", CPU, pytest.fail).precision == "fp32"  # forced: no check runs
    monkeypatch.setattr(precision, "native_bf16", lambda device: (False, "CPU has neither"))
    choice = choose_precision("auto", CPU, pytest.fail)
    assert choice == PrecisionChoice("fp32", "CPU has neither")
    assert choose_precision("bf16", CPU, pytest.fail).precision == "bf16"


def test_min_row_cosine_is_the_worst_row():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert min_row_cosine(a, b) == pytest.approx(2 ** -0.5)


def _env(run_dir: Path) -> dict:
    return json.loads((run_dir / "environment.json").read_text())


def test_run_records_the_choice_and_keeps_fp32_and_bf16_features_apart(tmp_path, example_plugin, capsys, monkeypatch):
    """CLI runs of the example recipe (the entry point in this process): fp32 forced, then bf16 forced, share no
    feature entry; both are recorded."""
    recipe = EXAMPLE / "tones.toml"
    monkeypatch.setenv("AVGEN_HOME", str(tmp_path / "home"))
    wide_consoles(monkeypatch)
    small = ["--set", "data.clips_per_class=4", "--only", "featurize"]
    code, _, lines = avgen_in_process(capsys, "run", str(recipe), "--out", str(tmp_path / "runs"), "--set",
                                      "featurize.precision=fp32", "--set", "run.name=fp32", *small)
    assert code == 0, lines
    assert "featurize precision: fp32 (set in the recipe)" in "\n".join(lines)
    code, _, lines = avgen_in_process(capsys, "run", str(recipe), "--out", str(tmp_path / "runs"), "--set",
                                      "featurize.precision=bf16", "--set", "run.name=bf16", *small)
    assert code == 0, lines
    assert "0 from cache" in "\n".join(lines)  # no fp32 entry is reused for bf16
    assert _env(tmp_path / "runs" / "fp32")["featurize_precision"] == "fp32"
    record = _env(tmp_path / "runs" / "bf16")
    assert record["featurize_precision"] == "bf16" and record["threads"]["interop"] == 1
    code, _, lines = avgen_in_process(capsys, "run", str(recipe), "--out", str(tmp_path / "runs"), "--set",
                                      "featurize.precision=fp16")
    assert code == 2 and "featurize.precision" in "\n".join(lines), lines


def test_real_encoder_bf16_features_agree_with_fp32(monkeypatch, frames):
    """EfficientNet-Lite0 (ImageNet weights from its pip package): its bf16 autocast features pass the check.
    Detection is patched, so this runs on any CPU (without native bf16, torch emulates it: slower, same rounding)."""
    import avgen

    monkeypatch.setattr(precision, "native_bf16", lambda device: (True, "patched"))
    encoder = avgen.create("encoder", "efficientnet_lite0", input_size=96)
    images = torch.nn.functional.interpolate(frames.permute(0, 3, 1, 2).float(), size=96).round().clamp(0, 255)
    batch = images.to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    choice = choose_precision("auto", CPU, lambda: check_bf16(lambda: encoder.encode(batch), CPU))
    assert choice.value is not None and choice.value > 0.99, choice  # 0.999 is the rule; random frames vary more


def test_the_check_result_is_a_cache_note_that_clear_removes(tmp_path):
    """The featurize check's result is kept as a JSON note beside the tensor entries, not as an entry."""
    from avgen._core.cache import FeatureCache

    cache = FeatureCache(tmp_path / "cache")
    assert cache.note("k") is None
    cache.put_note("k", {"min_cosine": 0.9995})
    assert cache.note("k") == {"min_cosine": 0.9995} and cache.info()["entries"] == 0
    (tmp_path / "cache" / "notes" / "bad.json").write_text("{not json")
    assert cache.note("bad") is None
    cache.clear()
    assert cache.note("k") is None


def test_generate_uses_bf16_frames_only_where_the_generators_output_agrees_on_the_video(tiny_run, monkeypatch):
    """A run whose featurize chose fp32 by itself: generate checks, on the video's first window, whether bf16
    frames give the same class and s' (within OUTPUT_TOLERANCE) and encodes in bf16 only then, once per video
    for windows and events alike. The encoder's bf16 error is injected and native bf16 patched, so this runs
    the same on any CPU."""
    import avgen
    import avgen._core.videosound as videosound

    video = sorted((tiny_run.parents[1] / "data").glob("*.mp4"))[0]
    calls = []

    def model_with(error, native=True, requested="auto"):
        model = avgen.load(tiny_run, device="cpu")
        model.meta["featurize_precision"] = "fp32"  # as where featurize's own check refused bf16
        plain = model.encoder.encode

        def encode(frames):
            features = plain(frames)
            calls.append(torch.is_autocast_enabled("cpu"))
            if torch.is_autocast_enabled("cpu"):  # what bf16 does to this encoder: a relative error of ``error``
                features = features * (1 + error * torch.linspace(-1, 1, features.shape[-1]))
            return features

        model.encoder.encode = encode
        model.recipe = model.recipe.model_copy(
            update={"featurize": model.recipe.featurize.model_copy(update={"precision": requested})})
        monkeypatch.setattr(precision, "native_bf16", lambda device: (native, "patched"))
        calls.clear()
        return model

    reference, _ = model_with(0.0, native=False).sound(video)  # fp32 frames: no check
    assert not any(calls)
    model = model_with(1e-4)
    close, summary = model.sound(video)
    assert summary["encoder_precision"] == "bf16" and summary["bf16_same_class"]
    assert summary["bf16_output_difference"] <= videosound.OUTPUT_TOLERANCE
    assert calls.count(False) == 1 and calls.count(True) > 2  # the check's fp32 window, then bf16 frames only
    assert (close - reference).abs().max() < 0.05  # nearly the same sound
    calls.clear()
    model.window_outputs(video, [1.0, 2.5])  # events: the same decision, not checked again
    assert calls and all(calls) and model.frames_precision(video) == "bf16"
    assert model.frames_check(video)["encoder_precision"] == "bf16"  # what an events summary records
    assert model_with(1e-4).frames_check(video) == {}  # nothing encoded yet: no check has run
    far_model = model_with(20.0)  # features scaled by up to 21x: another sound
    far, summary = far_model.sound(video)
    assert summary["encoder_precision"] == "fp32"
    assert summary["bf16_output_difference"] > videosound.OUTPUT_TOLERANCE or not summary["bf16_same_class"]
    assert torch.equal(far, reference)  # the check refused bf16: the sound is the fp32 one, bit for bit
    calls.clear()
    far_model.window_outputs(video, [1.0])
    assert calls and not any(calls)
    # no check where the recipe set fp32 itself
    summary = model_with(20.0, requested="fp32").sound(video)[1]
    assert summary["encoder_precision"] == "fp32" and "bf16_output_difference" not in summary and not any(calls)
