"""The run directory: its stage ledger, lock, log, environment record, resolved recipe and skipped.txt.

A run directory holds ``stages.json`` (the ledger of finished stages), ``run.lock`` (held while a
process runs it), ``log.txt``, ``recipe.toml`` (the resolved recipe), ``environment.json``,
``dataset.json``, ``skipped.txt`` and the stages' outputs (checkpoints/, generated/, figures/,
metrics.json, history.json, report.html, report.md).
"""

from __future__ import annotations

import datetime

import fcntl
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from avgen import __version__
from avgen._core.atomic import folder_error, remove_stale_temp_files, write_json, write_text
from avgen._core.cache import cache_key
from avgen._core.errors import AvgenError, RunLockedError

STAGES: tuple[str, ...] = ("prepare", "featurize", "fit", "generate", "evaluate", "report")
SPLITS: tuple[str, ...] = ("train", "val", "test")
log = logging.getLogger("avgen")


class RunDir:
    """Files of one run: resolved recipe, environment, ledger, log, lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ledger_path = path / "stages.json"

    def ledger(self) -> dict[str, Any]:
        if not self.ledger_path.is_file():
            return {"stages": {}}
        try:
            return json.loads(self.ledger_path.read_text())
        except (OSError, json.JSONDecodeError):
            raise AvgenError(
                f"{self.ledger_path}: stage ledger is unreadable; rerun with --fresh to start this run over"
            ) from None

    def done(self, stage: str) -> bool:
        return self.ledger()["stages"].get(stage, {}).get("status") == "done"

    def mark(self, stage: str, seconds: float, info: dict[str, Any] | None = None) -> None:
        ledger = self.ledger()
        ledger["stages"][stage] = {"status": "done", "seconds": round(seconds, 3), "finished": time.time(), **(info or {})}
        write_json(self.ledger_path, ledger)

    def forget_from(self, stage: str) -> None:
        """Mark ``stage`` and every later stage as not done."""
        ledger = self.ledger()
        for s in STAGES[STAGES.index(stage):]:
            ledger["stages"].pop(s, None)
        write_json(self.ledger_path, ledger)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold ``run.lock`` for the duration; a second process on the same run dir is refused."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            handle = open(self.path / "run.lock", "a+")
        except OSError as exc:  # a read-only file system, no permission, a file where a folder should be
            raise folder_error(self.path, "the run directory", exc,
                               "choose a writable folder with --out (or run.out in the recipe)") from exc
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise RunLockedError(
                f"{self.path}: another avgen process is using this run directory; wait for it or use another --out"
            ) from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    def start(self, resolved: dict[str, Any], environment: Callable[[], dict[str, Any]], fresh: bool) -> None:
        """Check the folder holds this recipe's run (or start it over with ``fresh``), then write recipe.toml,
        environment.json and the recipe id into the ledger."""
        recipe_id = cache_key(resolved)
        existing = self.ledger() if self.ledger_path.is_file() else None
        if fresh and self.path.exists():
            for name in ("stages.json", "metrics.json", "history.json", "report.html", "report.md", "dataset.json",
                         "skipped.txt"):
                (self.path / name).unlink(missing_ok=True)
            for sub in ("checkpoints", "generated", "figures"):
                shutil.rmtree(self.path / sub, ignore_errors=True)
            existing = None
        elif existing is not None and existing.get("recipe_id") not in (None, recipe_id):
            if _finished_beyond_prepare(existing):
                raise AvgenError(
                    f"{self.path}: holds a run of a different recipe (or different --set values{_differs(self.path, resolved)}); "
                    "add --fresh to start it over or choose another --out"
                )
            existing = None  # an earlier attempt that failed before featurize finished: start over
            self.ledger_path.unlink(missing_ok=True)
        self.path.mkdir(parents=True, exist_ok=True)
        if removed := remove_stale_temp_files(self.path):  # left by a killed process; we hold the lock
            log.info("removed %d temporary files left by an interrupted write", removed)
        write_text(self.path / "recipe.toml", dump_toml(resolved))
        write_json(self.path / "environment.json", environment())
        ledger = self.ledger()
        ledger["recipe_id"] = recipe_id
        write_json(self.ledger_path, ledger)


def _differs(run_dir: Path, resolved: dict[str, Any]) -> str:
    """', first: KEY was A, now B' for the first setting where the run's recipe.toml and ``resolved`` differ
    (settings absent from the file and None in ``resolved`` alike); '' when the file is unreadable or none differs."""
    import tomllib

    try:
        old = tomllib.loads((Path(run_dir) / "recipe.toml").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""

    def first(a: Any, b: Any, where: str) -> str | None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in list(dict.fromkeys([*a, *b])):
                found = first(a.get(key), b.get(key), f"{where}.{key}" if where else str(key))
                if found:
                    return found
            return None
        if isinstance(a, list) and isinstance(b, list):
            found = next((f for k, (x, y) in enumerate(zip(a, b)) if (f := first(x, y, f"{where}[{k}]"))), None)
            return found or (None if len(a) == len(b) else f"{where} had {len(a)} entries, now {len(b)}")
        return None if a == b else f"{where} was {a!r}, now {b!r}"

    found = first(old, json.loads(json.dumps(resolved, default=str)), "")
    return f", first: {found}" if found else ""


def add_to_environment(run_dir: Path, entries: dict[str, Any]) -> None:
    """Add entries (e.g. a precision decided during featurize) to the run's environment.json."""
    path = Path(run_dir) / "environment.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        record = {}
    write_json(path, {**record, **entries})


def _finished_beyond_prepare(ledger: dict[str, Any]) -> bool:
    """Whether a ledger records a finished stage whose results depend on more than the data."""
    return any(info.get("status") == "done" for stage, info in ledger.get("stages", {}).items() if stage != "prepare")


def environment_record(recipe: Any, device: torch.device, threads: Any = None) -> dict[str, Any]:
    """Versions, seed, device, threads (an avgen._core.threads.ThreadPlan), git commit and where each of the recipe's
    components comes from (plugin, distribution, version: what ``avgen generate --run`` names when one is missing)."""
    from avgen._core.plugins import component_source, get_plugins
    from avgen._core.recipe import COMPONENT_SECTIONS, LIST_SECTIONS

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    plugins = {name: {"distribution": p.distribution, "version": p.version, "error": p.error}
               for name, p in get_plugins().info.items()}
    specs = [(kind, getattr(recipe, section)) for section, kind in COMPONENT_SECTIONS.items()]
    specs += [(kind, spec) for section, kind in LIST_SECTIONS.items() for spec in getattr(recipe, section)]
    components = [{"kind": kind, **component_source(kind, spec.name)} for kind, spec in specs if spec is not None]
    return {
        "avgen": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "cuda": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
        "seed": recipe.run.seed,
        "git_commit": commit,
        "argv": sys.argv,
        "plugins": plugins,
        "components": components,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **({"threads": threads.record()} if threads is not None else {}),
    }


def write_skipped(run_dir: Path, rows: dict[str, list[str]], clips: dict[str, list[str]]) -> None:
    """skipped.txt: one line per skipped annotation row or clip (split, then why), or no file when none was skipped."""
    path = run_dir / "skipped.txt"
    lines = [f"{split}\t{message}" for split in SPLITS for message in rows[split] + clips.get(split, [])]
    if lines:
        write_text(path, "\n".join(lines) + "\n")
    else:
        path.unlink(missing_ok=True)


def empty_split_warning(counts: dict[str, int]) -> str | None:
    """The warning for a run whose validation split came out empty (too few videos per class for its fraction)."""
    if counts.get("val"):
        return None
    return ("warning: the val split has no clips: the fit keeps the epoch of the lowest training loss, and a fitted "
            "detector keeps no picture of the training videos to tell unlike videos by; raise data.val_fraction or "
            "add videos (the split is by video)")


def skipped_reasons(messages: list[str]) -> dict[str, int]:
    """How many skipped rows give each reason, most common first; a message 'WHERE: WHY' counts under WHY."""
    counts: dict[str, int] = {}
    for message in messages:
        reason = split_reason(message)[1]
        counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def split_reason(message: str) -> tuple[str, str]:
    """A skipped item's message 'WHERE: WHY' as (WHERE, WHY); ('', message) when it has no 'WHERE: '."""
    where, sep, why = message.partition(": ")
    return (where, why.strip()) if sep and why.strip() else ("", message.strip())


@contextmanager
def run_log(path: Path, enabled: bool = True) -> Iterator[None]:
    """Send the 'avgen' logger to the run's log.txt while the run executes (then to it no more)."""
    if not enabled:
        yield
        return
    handler = logging.FileHandler(path, encoding="utf-8", delay=True)  # opened at the first line: a refused run leaves none
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("avgen")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()


def dump_toml(data: dict[str, Any], header: bool = True) -> str:
    """Write a recipe dict as TOML (tables, arrays of tables, scalars, lists, dates); any key, any text."""
    head: list[str] = ["# resolved recipe written by avgen " + __version__] if header else []
    body: list[str] = []
    for key, value in data.items():
        if isinstance(value, dict):
            body += ["", f"[{_toml_key(key)}]"] + [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()]
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                body += ["", f"[[{_toml_key(key)}]]"] + [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in item.items()]
        else:
            head.append(f"{_toml_key(key)} = {_toml_value(value)}")
    return "\n".join(head + body) + "\n"


def _toml_key(key: Any) -> str:
    text = str(key)
    return text if text and all(ch.isascii() and (ch.isalnum() or ch in "_-") for ch in text) else toml_string(text)


def toml_string(text: str) -> str:
    """A TOML basic string of any text (quotes, backslashes, control characters and DEL escaped)."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v) if v == v and v not in (float("inf"), float("-inf")) else ("nan" if v != v else ("inf" if v > 0 else "-inf"))
    if isinstance(v, (datetime.date, datetime.time)):
        return v.isoformat()
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    return toml_string(str(v))