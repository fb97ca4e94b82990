"""CPU threads, chosen in one place: torch's intra- and inter-op pools and each DataLoader worker's.

On a machine whose cores are shared, more compute threads than free cores make every parallel
region wait for a descheduled thread (OpenMP splits each op evenly), so an epoch that takes 5 s
alone can take 30 s beside one other busy process. avgen therefore uses at most the cores it may
run on (``os.sched_getaffinity``, or ``--threads``), one inter-op thread (it runs no parallel
graphs), one torch thread per DataLoader worker (``workers x 1 <= cores``), and asks OpenMP to
sleep rather than spin while it waits (``OMP_WAIT_POLICY=PASSIVE``, when set before torch loads).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

WAIT_POLICY = "PASSIVE"  # OpenMP threads sleep at barriers instead of spinning on a core another process needs


@dataclass(frozen=True)
class ThreadPlan:
    """How many threads each part of a run uses."""

    cores: int  # cores avgen may use: the affinity mask, or --threads
    intra: int  # torch.set_num_threads in the main process
    interop: int  # torch.set_num_interop_threads
    workers: int  # DataLoader worker processes (video decoding)
    worker_threads: int  # torch threads inside each worker

    def record(self) -> dict[str, Any]:
        """What the run's environment.json says about threads."""
        return {**asdict(self), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def plan_threads(threads: int | None = None, workers: int = 0) -> ThreadPlan:
    """The plan for ``threads`` cores (None or 0: every core avgen may use) and ``workers`` DataLoader workers.

    Without ``threads``, OMP_NUM_THREADS when set, else the cores (shared out among the torchrun ranks of this
    machine, ``LOCAL_WORLD_SIZE``); each worker gets one thread, so ``workers x worker_threads <= cores``
    for every worker count up to the cores.
    """
    if not threads:
        threads = _int_env("OMP_NUM_THREADS")  # the user's OMP_NUM_THREADS is a choice too
    ranks = max(1, _int_env("LOCAL_WORLD_SIZE") or 1)
    cores = threads if threads else max(1, available_cores() // ranks)
    return ThreadPlan(cores=cores, intra=cores, interop=1, workers=workers, worker_threads=1)


def _int_env(name: str) -> int:
    try:
        return max(0, int(os.environ.get(name, "")))
    except ValueError:
        return 0


def prefer_passive_wait() -> None:
    """Ask OpenMP to sleep while waiting, unless the user chose a policy; effective only before torch loads."""
    os.environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)


def apply_threads(plan: ThreadPlan) -> ThreadPlan:
    """Set torch's thread pools of this process to ``plan`` (the inter-op pool only while torch allows it)."""
    import torch

    torch.set_num_threads(plan.intra)
    if torch.get_num_interop_threads() != plan.interop:
        try:
            torch.set_num_interop_threads(plan.interop)
        except RuntimeError:  # already used in this process (e.g. under pytest): it keeps its size
            pass
    return plan


def worker_init(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: one torch thread per worker (the main process keeps the cores)."""
    import torch

    torch.set_num_threads(1)

