"""avgen._core.threads: torch's threads, the inter-op pool and DataLoader workers' threads are chosen, not inherited."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import avgen._core.threads as threads
from avgen._core.threads import plan_threads, worker_init
from conftest import EXAMPLE, avgen_in_process


def test_plan_uses_the_allowed_cores_unless_told(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 6)
    for name in ("OMP_NUM_THREADS", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    plan = plan_threads(workers=4)
    assert (plan.cores, plan.intra, plan.interop, plan.workers, plan.worker_threads) == (6, 6, 1, 4, 1)
    assert plan.workers * plan.worker_threads <= plan.cores
    assert plan_threads(3).intra == 3  # --threads
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two torchrun ranks on this machine share its cores
    assert plan_threads().intra == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's choice wins over the cores
    assert plan_threads().intra == 1
    assert plan_threads(2).intra == 2  # and --threads over OMP_NUM_THREADS


def test_available_cores_follows_the_affinity_mask():
    """A process pinned to one core (taskset's mask) plans one thread."""
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); os.environ.pop('OMP_NUM_THREADS', None); "
            "from avgen._core.threads import plan_threads; print(plan_threads().intra)")
    if not hasattr(__import__("os"), "sched_setaffinity"):
        pytest.skip("no sched_setaffinity on this platform")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


class _Threads(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> int:
        return torch.get_num_threads()


def test_dataloader_workers_use_one_thread_each():
    loader = torch.utils.data.DataLoader(_Threads(), batch_size=1, num_workers=2, worker_init_fn=worker_init)
    assert [int(x) for x in loader] == [1, 1]


def test_cli_threads_option_is_applied_and_recorded(tmp_path, example_plugin, capsys, monkeypatch):
    """Through the CLI entry point in this process: --threads sets this process's torch threads (put back after)."""
    out = tmp_path / "runs"
    monkeypatch.setenv("AVGEN_HOME", str(tmp_path / "home"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the option, not the process's own count, makes it 2
    try:
        code, _, lines = avgen_in_process(capsys, "run", str(EXAMPLE / "tones.toml"), "--out", str(out), "--set",
                                          "data.clips_per_class=4", "--only", "prepare", "--threads", "2")
    finally:
        torch.set_num_threads(before)
    assert code == 0, lines
    record = json.loads((out / "tones_example" / "environment.json").read_text())
    assert record["threads"]["intra"] == 2 and record["torch_threads"] == 2
    assert record["threads"]["omp_wait_policy"] == "PASSIVE"
    code, _, lines = avgen_in_process(capsys, "run", str(EXAMPLE / "tones.toml"), "--threads", "-1")
    assert code == 2 and "--threads" in "\n".join(lines), lines
    code, printed, _ = avgen_in_process(capsys, "generate", "--help")
    assert code == 0 and "--threads" in printed
