"""Start the web server: check the runs, bind the socket, run uvicorn, clean up the temporary folder on exit."""

from __future__ import annotations

import ipaddress
import shutil
import socket
import tempfile
from pathlib import Path

from avgen import AvgenError, make_console


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on (host, port); port 0 takes a free one."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise AvgenError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)  # connections wait in the backlog until uvicorn accepts them
    except OSError as exc:
        sock.close()
        raise AvgenError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port (0: any free one)") from None
    return sock


def serve(paths: list[Path], host: str, port: int, max_upload_bytes: int, max_video_seconds: float,
          keep_seconds: float, device: str) -> None:
    import uvicorn

    from avgen import resolve_device

    from avgen_serve.app import Server, make_app
    from avgen_serve.jobs import Jobs
    from avgen_serve.runs import ServedRun, find_runs
    from avgen_serve.trials import Trials

    console = make_console(stderr=True)
    dev = resolve_device(device)
    runs = [ServedRun(f"r{i}", path, dev) for i, path in enumerate(find_runs(paths))]
    sock = bind(host, port)
    if not is_loopback(host):
        console.print(f"[bold red]warning[/]: --host {host} lets other machines on the network use this page "
                      "(no login, uploads run on this machine); use 127.0.0.1 unless you mean it")
    root = Path(tempfile.mkdtemp(prefix="avgen-serve-"))
    jobs = Jobs(root, console, keep_seconds)
    server = Server(runs, jobs, Trials(root), max_upload_bytes, max_video_seconds, console)
    app = make_app(server)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    for run in runs:
        console.print(f"  {run.name} ({run.generator}): {run.path}", markup=False, highlight=False)
    print(f"avgen serve: http://{shown}:{bound_port}/ (Ctrl-C to stop)", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it stopped on; for a server that is the normal end
        pass
    finally:
        jobs.close()
        sock.close()
        shutil.rmtree(root, ignore_errors=True)
        console.print(f"stopped; removed {root}", markup=False, highlight=False)
