"""The CUDA paths: encoder autocast and the bf16 decision, training with amp, the frozen SoundNet on the GPU, nccl.

Marked ``cuda`` and skipped without a GPU; ``benchmarks/gpu.sh`` runs them (``pytest -m cuda``). Each compares
the GPU's result with the CPU's in float32, an independent path, within bf16/TF32 tolerances.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu.sh runs these)")]

CUDA = torch.device("cuda") if torch.cuda.is_available() else None
TESTS = Path(__file__).parent


def test_encoder_on_cuda_matches_cpu_and_auto_precision_decides():
    import avgen
    from avgen._core.precision import autocast_for, check_bf16, choose_precision

    frames = torch.randint(0, 256, (8, 224, 224, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    cpu = avgen.create("encoder", "efficientnet_lite0").encode(frames)
    gpu_encoder = avgen.create("encoder", "efficientnet_lite0", context={"device": CUDA})
    torch.backends.cudnn.allow_tf32 = False
    gpu = gpu_encoder.encode(frames)
    assert gpu.device.type == "cpu"  # encode() returns CPU features
    torch.testing.assert_close(gpu, cpu, rtol=1e-3, atol=1e-3)
    choice = choose_precision("auto", CUDA, lambda: check_bf16(lambda: gpu_encoder.encode(frames), CUDA))
    assert choice.value is not None and choice.precision == ("bf16" if choice.value >= 0.999 else "fp32"), choice
    with autocast_for(choice.precision, CUDA):
        assert torch.isfinite(gpu_encoder.encode(frames)).all()


def test_frozen_soundnet_on_cuda_matches_the_plain_model_on_cpu():
    from avgen_soundnet import SoundNet8
    from avgen_soundnet.perceptual import PerceptualParams, SoundNetPerceptual

    torch.manual_seed(0)
    net = SoundNet8().requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    generated, real = torch.randn(4, 11025, generator=g) * 0.1, torch.randn(4, 11025, generator=g) * 0.1
    plain = SoundNetPerceptual(net, PerceptualParams(), 22050, fast=False)
    wave = generated.clone().requires_grad_(True)
    expected = plain.perceptual(wave, real)
    expected.backward()
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    fast = SoundNetPerceptual(net, PerceptualParams(precision="fp32"), 22050)
    wave_gpu = generated.to(CUDA).requires_grad_(True)
    got = fast.perceptual(wave_gpu, real.to(CUDA))
    got.backward()
    assert float(got) == pytest.approx(float(expected), rel=1e-4)
    torch.testing.assert_close(wave_gpu.grad.cpu(), wave.grad, rtol=1e-3, atol=1e-8)
    auto = SoundNetPerceptual(net, PerceptualParams(), 22050)  # bf16 on a GPU with bf16, when the loss agrees
    auto.perceptual(generated.to(CUDA), real.to(CUDA))
    assert auto.precision.precision in ("bf16", "fp32") and auto.precision.value is not None


def test_fit_with_amp_on_cuda_follows_the_cpu_loss_curve(tmp_path):
    sys.path.insert(0, str(TESTS))
    from test_train_fit import CPU, losses_for, make_model, synthetic_split, train_params
    from avgen._core.train import fit
    curves = {}
    for name, device, amp in (("cpu", CPU, False), ("cuda_amp", CUDA, True)):
        result = fit(model=make_model("can_lstm", hidden=16), losses=losses_for("can_lstm"),
                     train=synthetic_split(120, 1), val=synthetic_split(40, 2),
                     params=train_params(epochs=3, batch_size=20, amp=amp), run_dir=tmp_path / name, seed=4,
                     device=device)
        curves[name] = [h["train"]["total"] for h in result.history]
    assert all(torch.isfinite(torch.tensor(curves["cuda_amp"])))
    for cpu, gpu in zip(curves["cpu"], curves["cuda_amp"]):
        assert gpu == pytest.approx(cpu, rel=0.05), curves  # bf16/fp16 autocast: close, not equal


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="nccl with two ranks needs two GPUs")
def test_two_gpu_processes_with_nccl_follow_the_single_process_loss_curve(tmp_path):
    script = tmp_path / "train_script.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        import torch
        sys.path.insert(0, {str(TESTS)!r})
        from test_train_fit import losses_for, make_model, synthetic_split, train_params
        from avgen._core.train import fit
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        fit(model=make_model("can_lstm", hidden=16), losses=losses_for("can_lstm"), train=synthetic_split(240, 1),
            val=synthetic_split(60, 2), params=train_params(epochs=3, batch_size=24), run_dir=Path(sys.argv[1]),
            seed=4, device=device)
    """))
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    for processes in (1, 2):
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                   str(script), str(tmp_path / f"world{processes}")]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    single = json.loads((tmp_path / "world1" / "history.json").read_text())
    double = json.loads((tmp_path / "world2" / "history.json").read_text())
    for a, b in zip(single, double):
        assert b["train"]["total"] == pytest.approx(a["train"]["total"], rel=1e-4)
