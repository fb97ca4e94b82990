"""Generation jobs: one worker thread, a job id per request, progress the page polls, files cleaned up."""

from __future__ import annotations

import shutil
import threading
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avgen import AvgenError

from avgen_serve.runs import METHODS, ServedRun


@dataclass
class Job:
    """A request to voice one video with some runs; what the progress endpoint returns."""

    id: str
    folder: Path
    video: Path
    title: str
    runs: list[ServedRun]
    state: str = "queued"  # queued, running, done, error
    done: int = 0
    total: int = 1
    step: str = "waiting for the worker"
    error: str | None = None
    results: list[dict[str, Any]] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    finished: float | None = None

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state, "progress": self.done / max(self.total, 1), "step": self.step,
                "error": self.error, "results": self.results, "video": self.title}


class Jobs:
    """Jobs run one at a time in a worker thread; a job's folder is deleted ``keep_seconds`` after it ends."""

    def __init__(self, root: Path, console: Any, keep_seconds: float = 3600.0) -> None:
        self.root, self.console, self.keep_seconds = Path(root), console, keep_seconds
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="avgen-serve")

    def new_folder(self) -> tuple[str, Path]:
        """A fresh id and its folder under the server's temporary folder."""
        self.clean()
        job_id = uuid.uuid4().hex[:16]
        folder = self.root / job_id
        folder.mkdir(parents=True)
        return job_id, folder

    def submit(self, job: Job) -> Job:
        job.total = len(job.runs) * len(METHODS)
        with self._lock:
            if job.id in self._jobs:
                raise AvgenError("this upload was used by a job already; upload the video again")
            self._jobs[job.id] = job
        self._worker.submit(self._run, job)
        return job

    def run_task(self, fn: Any, *args: Any) -> None:
        """Another task for the same worker (e.g. rewriting a report), after the jobs before it."""
        self._worker.submit(fn, *args)

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise AvgenError(f"no job {job_id!r} (finished jobs are removed after {self.keep_seconds / 60:.0f} minutes)")
        return job

    def _run(self, job: Job) -> None:
        from avgen import mux_audio, write_wav

        job.state = "running"
        features: dict[str, Any] = {}  # the video's frame features once per encoder, shared by the runs using it
        try:
            for run in job.runs:
                for method in METHODS:
                    job.step = f"{run.name}: {method} sound{run.pending(method)}"
                    started = time.perf_counter()
                    try:
                        if not run.by_events() and run.encoder_key() not in features:  # windows read every frame
                            features[run.encoder_key()] = run.features(job.video)
                        wave, summary = run.generate(job.video, method, self.console, features.get(run.encoder_key()))
                    except AvgenError as exc:  # e.g. the exemplar bank's dataset is gone: the other sounds still come
                        job.results.append({"run": run.key, "name": run.name, "method": method, "error": str(exc)})
                        job.done += 1
                        continue
                    stem = f"{run.key}-{method}"
                    wav = write_wav(job.folder / f"{stem}.wav", wave, summary["sample_rate"])
                    mux_audio(job.video, wav, job.folder / f"{stem}.mp4")
                    seconds = time.perf_counter() - started
                    job.results.append({
                        "run": run.key, "name": run.name, "generator": run.generator, "method": method,
                        "wav": f"/files/{job.id}/{stem}.wav", "mp4": f"/files/{job.id}/{stem}.mp4",
                        "predicted": summary.get("predicted"), "mode": summary.get("mode"), "seconds": round(seconds, 2),
                        "video_seconds": round(float(summary["seconds"]), 2)})
                    job.done += 1
                    self.console.print(f"job {job.id}: {run.name} {method} in {seconds:.1f} s", markup=False,
                                       highlight=False)
            job.state, job.step = "done", "done"
        except AvgenError as exc:
            job.state, job.error = "error", str(exc)
        except Exception as exc:  # shown as one line in the page; the traceback goes to the server's terminal
            self.console.print(traceback.format_exc(), markup=False, highlight=False)
            job.state, job.error = "error", f"internal error ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        finally:
            job.finished = time.time()

    def clean(self) -> None:
        """Forget jobs that ended more than ``keep_seconds`` ago and delete their files, and uploads never used."""
        now = time.time()
        with self._lock:
            for job in [j for j in self._jobs.values() if j.finished is not None and now - j.finished > self.keep_seconds]:
                del self._jobs[job.id]
            busy = {j.id for j in self._jobs.values()}
        for folder in self.root.iterdir():
            if folder.name != "trials" and folder.name not in busy and now - folder.stat().st_mtime > self.keep_seconds:
                shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)
