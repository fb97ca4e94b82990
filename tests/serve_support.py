"""Drive `avgen serve` for tests and docs/scripts/serve_screenshot.py: the server in a subprocess, and headless
Chromium through the Chrome DevTools Protocol (raw CDP over a websocket: only Debian's `chromium` is needed)."""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def chromium() -> str | None:
    """The Chromium executable, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if path := shutil.which(name):
            return path
    return None


class ServeProcess:
    """``python -m avgen serve ARGS --port 0`` in a subprocess; ``url`` once it listens."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
                 timeout: float = 120) -> None:
        full_env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **(env or {})}
        self.proc = subprocess.Popen([sys.executable, "-m", "avgen", "serve", *args, "--port", "0"], cwd=cwd,
                                     env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.stderr: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.proc.stdout], daemon=True).start()
        try:
            first = lines.get(timeout=timeout)
        except queue.Empty:
            self.stop()
            raise RuntimeError(f"avgen serve did not start in {timeout} s: {''.join(self.stderr)[-2000:]}") from None
        if not first.startswith("avgen serve: http://"):
            self.stop()
            raise RuntimeError(f"avgen serve said {first!r}: {''.join(self.stderr)[-2000:]}")
        self.url = first.split()[2]

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line)

    def get(self, path: str) -> tuple[int, bytes]:
        return _request(self.url + path.lstrip("/"))

    def post(self, path: str, data: bytes | dict, content_type: str = "application/json") -> tuple[int, Any]:
        body = json.dumps(data).encode() if isinstance(data, dict) else data
        status, raw = _request(self.url + path.lstrip("/"), body, {"Content-Type": content_type})
        return status, json.loads(raw)

    def stop(self) -> int:
        """Ctrl-C, as a user stops it; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(2)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def __enter__(self) -> "ServeProcess":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _request(url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Browser:
    """Headless Chromium with one page, driven over the DevTools Protocol."""

    def __init__(self, executable: str, profile: Path, width: int = 1200, height: int = 900) -> None:
        import websocket

        profile.mkdir(parents=True, exist_ok=True)
        # Chromium's and PulseAudio's own temporary folders, removed by close(): a short path of its own, as the
        # sockets Chromium makes there must fit in 108 characters (a test's tmp_path is too long)
        self.scratch = Path(tempfile.mkdtemp(prefix="avgen-chromium-", dir="/tmp" if os.path.isdir("/tmp") else None))
        port_file = profile / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)  # a stale one from an earlier browser in this profile
        self.proc = subprocess.Popen(
            [executable, "--headless=new", "--no-sandbox", "--remote-debugging-port=0", f"--user-data-dir={profile}",
             "--no-first-run", "--no-default-browser-check", "--disable-gpu", "--mute-audio",
             "--autoplay-policy=no-user-gesture-required", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, "TMPDIR": str(self.scratch)})
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port in 60 s")
            time.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as response:
            pages = [t for t in json.load(response) if t.get("type") == "page"]
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=120, suppress_origin=True)
        self._id = 0
        self.send("Page.enable")
        self.send("Runtime.enable")

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (a promise is awaited)."""
        result = self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails'].get('exception', {}).get('description')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60) -> Any:
        """Poll a JavaScript expression until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout} s for {expression}")
            time.sleep(0.25)

    def click(self, selector: str) -> None:
        self.evaluate(f"document.querySelector({json.dumps(selector)}).click()")

    def set_files(self, selector: str, paths: list[Path]) -> None:
        """Choose files in an <input type=file>, as a user does in the file dialog."""
        root = self.send("DOM.getDocument")["root"]["nodeId"]
        node = self.send("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.send("DOM.setFileInputFiles", nodeId=node, files=[str(p) for p in paths])

    def screenshot(self, path: Path) -> Path:
        """The whole page as a PNG."""
        height = int(self.evaluate("document.documentElement.scrollHeight"))
        width = int(self.evaluate("document.documentElement.scrollWidth"))
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            if getattr(self, "ws", None) is not None:
                self.ws.close()
        finally:  # Debian's chromium is a shell script around the browser: end the whole group it started
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                self.proc.poll()  # reap the script, so that only live processes keep the group
                try:
                    os.killpg(self.proc.pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            shutil.rmtree(self.scratch, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def audio_elements_loaded(browser: Browser, selector: str, timeout: float = 60) -> list[dict[str, Any]]:
    """src, duration and readyState of each <audio>/<video> matching ``selector`` once its metadata has loaded
    (or it failed: then ``error`` is the MediaError code)."""
    script = f"""Promise.all([...document.querySelectorAll({json.dumps(selector)})].map((m) => new Promise((done) => {{
      const report = () => done({{src: m.currentSrc || m.src, duration: m.duration, ready: m.readyState,
                                   error: m.error ? m.error.code : null, width: m.videoWidth || 0}});
      if (m.readyState >= 1 || m.error) report();
      else {{ m.addEventListener('loadedmetadata', report, {{once: true}}); m.addEventListener('error', report, {{once: true}});
             m.load(); setTimeout(report, {int(timeout * 1000)}); }}
    }})))"""
    return browser.evaluate(script)
