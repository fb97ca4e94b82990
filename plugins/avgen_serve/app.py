"""The web app of ``avgen serve``: one plain HTML page and a small JSON API (Starlette).

Routes: ``/`` the page; ``/api/runs``; ``/api/upload`` (the video as the request body, streamed to disk
with the size limit counted as it arrives); ``/api/generate`` -> a job id; ``/api/jobs/{id}`` (progress
and results); ``/files/{job}/{name}``; ``/api/trial`` (a new listening-test trial), ``/trial/{id}/{name}``,
``/api/rate``; ``/api/mos``. Every error is JSON ``{"error": one line}``; tracebacks stay in the terminal.
"""

from __future__ import annotations

import re
import shutil
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from avgen import AvgenError

from avgen_serve.jobs import Job, Jobs
from avgen_serve.runs import ServedRun
from avgen_serve.trials import Trials, scores_of

PAGE = Path(__file__).with_name("page.html")
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi", ".ogv")
MEDIA_TYPES = {".mp4": "video/mp4", ".wav": "audio/wav"}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class TooLarge(AvgenError):
    """An upload over the server's limit (HTTP 413)."""


@dataclass
class Server:
    """What the routes share: the runs, the jobs, the listening-test trials and the limits."""

    runs: list[ServedRun]
    jobs: Jobs
    trials: Trials
    max_upload_bytes: int
    max_video_seconds: float
    console: Any

    def run(self, key: str) -> ServedRun:
        for run in self.runs:
            if run.key == key:
                return run
        raise AvgenError(f"no run {key!r} on this server; reload the page")

    def chosen(self, keys: Any) -> list[ServedRun]:
        if not isinstance(keys, list) or not keys:
            raise AvgenError("choose at least one trained run")
        return [self.run(str(k)) for k in dict.fromkeys(keys)]


def make_app(server: Server) -> Starlette:
    page = PAGE.read_text(encoding="utf-8")

    async def index(request: Request) -> Response:
        return HTMLResponse(page.replace("{{MAX_UPLOAD_MB}}", f"{server.max_upload_bytes / 2**20:.3g}"))

    async def runs(request: Request) -> Response:
        return JSONResponse({"runs": [r.describe() for r in server.runs]})

    async def test_videos(request: Request) -> Response:
        run = server.run(request.query_params.get("run", ""))
        videos = await _in_thread(run.test_videos)
        return JSONResponse({"videos": [{"id": str(i), "name": v.name} for i, v in enumerate(videos)]})

    async def upload(request: Request) -> Response:
        name = Path(request.query_params.get("name", "video.mp4")).name
        suffix = Path(name).suffix.lower()
        if suffix not in VIDEO_SUFFIXES:
            raise AvgenError(f"{name}: not a video file name; give one of {', '.join(VIDEO_SUFFIXES)}")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > server.max_upload_bytes:
            raise TooLarge(f"{name}: {int(length) / 2**20:.1f} MB is over this server's limit of "
                           f"{server.max_upload_bytes / 2**20:.3g} MB (avgen serve --max-upload-mb)")
        job_id, folder = server.jobs.new_folder()
        target = folder / f"upload{suffix}"
        size = 0
        try:
            with open(target, "wb") as out:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > server.max_upload_bytes:
                        raise TooLarge(f"{name}: over this server's limit of {server.max_upload_bytes / 2**20:.3g} MB "
                                       "(avgen serve --max-upload-mb)")
                    out.write(chunk)
            info = await _in_thread(_check_video, target, name, server.max_video_seconds)
        except BaseException:  # refused, or the browser went away mid-upload: nothing of it stays
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return JSONResponse({"upload": job_id, "name": name, "seconds": round(info.duration, 2),
                             "width": info.width, "height": info.height})

    async def generate(request: Request) -> Response:
        body = await _json(request)
        chosen = server.chosen(body.get("runs"))
        if body.get("upload"):
            job_id = str(body["upload"])
            folder = server.jobs.root / job_id
            uploads = sorted(folder.glob("upload.*")) if _SAFE_NAME.match(job_id) else []
            if not uploads:
                raise AvgenError("the uploaded video is gone (the server keeps uploads for a while); upload it again")
            video, title = uploads[0], str(body.get("name") or uploads[0].name)
        elif body.get("test_video") is not None:
            videos = await _in_thread(server.run(str(body.get("test_run") or chosen[0].key)).test_videos)
            index = int(body["test_video"]) if str(body["test_video"]).isdigit() else -1
            if not 0 <= index < len(videos):
                raise AvgenError("no such test video; reload the page")
            job_id, folder = server.jobs.new_folder()
            video, title = videos[index], videos[index].name
        else:
            raise AvgenError("upload a video or pick a test video first")
        job = server.jobs.submit(Job(job_id, folder, video, title, chosen))
        return JSONResponse(job.public())

    async def job_status(request: Request) -> Response:
        return JSONResponse(server.jobs.get(request.path_params["job"]).public())

    async def job_file(request: Request) -> Response:
        job, name = request.path_params["job"], request.path_params["name"]
        if not (_SAFE_NAME.match(job) and _SAFE_NAME.match(name)) or name.startswith("upload."):
            raise HTTPException(404, "no such file")
        path = server.jobs.root / job / name
        if not path.is_file():
            raise HTTPException(404, f"no file {name}; finished jobs are removed after a while")
        return _file(path, download=request.query_params.get("download") == "1")

    async def new_trial(request: Request) -> Response:
        body = await _json(request)
        trial = await _in_thread(server.trials.new, server.chosen(body.get("runs")))
        return JSONResponse(trial.public())

    async def trial_file(request: Request) -> Response:
        trial, name = request.path_params["trial"], request.path_params["name"]
        return _file(server.trials.file(trial, name))

    async def rate(request: Request) -> Response:
        body = await _json(request)
        scores = body.get("scores")
        if not isinstance(scores, dict):
            raise AvgenError("send the scores as {label: 0..100}")
        result = await _in_thread(server.trials.rate, str(body.get("trial", "")), str(body.get("rater", "")), scores)
        for run in server.runs:
            if any(r["run"] == run.key for r in result["mos"]):
                server.jobs.run_task(_rewrite_report, run, server.console)
        return JSONResponse(result)

    async def scores(request: Request) -> Response:
        return JSONResponse({"runs": scores_of(server.runs)})

    async def avgen_error(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": str(exc)}, status_code=413 if isinstance(exc, TooLarge) else 400)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    async def internal_error(request: Request, exc: Exception) -> Response:
        server.console.print(traceback.format_exc(), markup=False, highlight=False)
        first = str(exc).splitlines()[0] if str(exc) else ""
        return JSONResponse({"error": f"internal error ({type(exc).__name__}: {first}); see the server's terminal"},
                            status_code=500)

    routes = [
        Route("/", index),
        Route("/api/runs", runs),
        Route("/api/test_videos", test_videos),
        Route("/api/upload", upload, methods=["POST"]),
        Route("/api/generate", generate, methods=["POST"]),
        Route("/api/jobs/{job}", job_status),
        Route("/files/{job}/{name}", job_file),
        Route("/api/trial", new_trial, methods=["POST"]),
        Route("/trial/{trial}/{name}", trial_file),
        Route("/api/rate", rate, methods=["POST"]),
        Route("/api/mos", scores),
    ]
    return Starlette(routes=routes, exception_handlers={AvgenError: avgen_error, HTTPException: http_error,
                                                         Exception: internal_error})


def _check_video(path: Path, name: str, max_seconds: float) -> Any:
    """Probe the upload: a readable video stream of a length the server accepts (not its file name)."""
    from avgen import probe

    try:
        info = probe(path)
    except AvgenError:
        raise AvgenError(f"{name}: not a video this server can read (corrupt, or not a video file)") from None
    if not info.has_video:
        raise AvgenError(f"{name}: holds no video stream; upload a video (mp4, mov, webm, ...)")
    if info.duration <= 0:
        raise AvgenError(f"{name}: zero-length video")
    if info.duration > max_seconds:
        raise AvgenError(f"{name}: {info.duration:.0f} s is longer than this server's limit of {max_seconds:g} s "
                         "(avgen serve --max-video-seconds)")
    return info


def _file(path: Path, download: bool = False) -> Response:
    media_type = MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")
    return FileResponse(path, media_type=media_type, filename=path.name if download else None,
                        content_disposition_type="attachment" if download else "inline")


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise AvgenError("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise AvgenError("the request body must be a JSON object")
    return body


async def _in_thread(fn: Any, *args: Any) -> Any:
    """Blocking work (probing, cutting a clip, writing ratings) off the event loop."""
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)


def _rewrite_report(run: ServedRun, console: Any) -> None:
    """Rewrite the run's report.html/report.md with the new mean opinion scores (skipped while the run is busy)."""
    from avgen import RunDir, RunLockedError, write_report

    if not (run.path / "report.html").is_file():
        return
    try:
        with RunDir(run.path).lock():
            write_report(run.path)
    except RunLockedError:
        console.print(f"{run.path}: busy; its report shows the new ratings after `avgen run RECIPE --only report`",
                      markup=False, highlight=False)
    except Exception as exc:  # the ratings are saved; a report that cannot be rewritten is said, not fatal
        console.print(f"{run.path}: report not rewritten ({type(exc).__name__}: {exc})", markup=False, highlight=False)
