"""``avgen serve``: a local web page to hear trained runs on your own video, and a blind listening test.

Needs the ``serve`` extra (Starlette and uvicorn): ``pip install -e ".[serve]"``. The command is
registered without it, and then says how to install it.
"""

from __future__ import annotations

from pathlib import Path

import click

from avgen import RunSection, hookimpl

INSTALL = 'avgen serve needs its extra: pip install -e ".[serve]" (Starlette and uvicorn)'


@click.command("serve")
@click.argument("run_dirs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback lets other machines use the page (no login).")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="Port (0: a free one).")
@click.option("--max-upload-mb", type=click.FloatRange(0.01, 10_000), default=200.0, show_default=True,
              help="Largest video the page accepts.")
@click.option("--max-video-seconds", type=click.FloatRange(0.1, 36_000), default=600.0, show_default=True,
              help="Longest video the page accepts.")
@click.option("--keep-minutes", type=click.FloatRange(0.1, 10_000), default=60.0, show_default=True,
              help="How long generated files stay downloadable; all are deleted when the server stops.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def serve_cmd(run_dirs: tuple[Path, ...], host: str, port: int, max_upload_mb: float, max_video_seconds: float,
              keep_minutes: float, device: str) -> None:
    """Serve a local web page: pick trained runs, upload a video (or pick a test video) and hear each run's raw and
    exemplar sound; rate test clips in a blind MUSHRA-style listening test (ratings go to each run's
    listening/ratings.json). RUN_DIRS are run directories or folders of them (default: ./runs)."""
    import importlib

    from avgen import AvgenError

    try:
        for module in ("starlette", "uvicorn"):
            importlib.import_module(module)
    except ImportError:
        raise AvgenError(INSTALL) from None
    from avgen_serve.server import serve

    serve(list(run_dirs) or [Path("runs")], host=host, port=port, max_upload_bytes=int(max_upload_mb * 2**20),
          max_video_seconds=max_video_seconds, keep_seconds=keep_minutes * 60, device=device)


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(serve_cmd)


@hookimpl
def run_sections(run_dir: Path) -> list[RunSection]:
    """The run's listening-test mean opinion scores (listening/ratings.json), for its report and the compare page."""
    from avgen_serve.listening import section

    return section(run_dir)
