"""The component index: what `avgen list`, `show` and `--help` print, cached so they import no plugin (no torch).

The index lives in ``$AVGEN_HOME/component-index.json`` under a key made of the entry points of
group ``avgen`` (name, module, distribution and version), the path, size and mtime of every file
of the plugin packages and of avgen itself, the mtimes of the sys.path folders (a package
installed or removed there, such as a broken plugin's missing dependency) and
``AVGEN_LOAD_PLUGINS``. When the key changes the plugins are loaded once and the index is
rewritten. A missing, unreadable or damaged index is rebuilt and one that cannot be written is
skipped. In a process that has loaded the plugins already, the index comes from them.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import sys
import types
import typing
from dataclasses import asdict, dataclass
from pathlib import Path, PurePath
from typing import Any

from avgen import __version__
from avgen._core.plugins import ENTRY_POINT_GROUP, PluginInfo

INDEX_FORMAT = 3  # 2: a Literal param's type lists its values ('fp32' | 'bf16'); 3: a path default shown as a string
INDEX_FILE = "component-index.json"


@dataclass(frozen=True)
class ComponentInfo:
    """What `avgen list` and `avgen show` print of one component."""

    kind: str
    name: str
    plugin: str
    summary: str
    version: str
    card: dict[str, Any]  # as `show --json` prints it
    card_rows: list[list[str]]  # (key, value) as `show` prints them
    params: list[list[str]]  # (field, type, default, description)

    @classmethod
    def from_component(cls, c: Any) -> ComponentInfo:
        """The printed form of a registered ``avgen._core.registry.Component``."""
        return cls(c.kind, c.name, c.plugin, c.summary, c.version, json.loads(json.dumps(c.card.as_dict(), default=str)),
                   [[str(k), str(v)] for k, v in c.card.as_dict().items()],
                   [list(field_row(name, f)) for name, f in c.params.model_fields.items()])


@dataclass(frozen=True)
class CommandInfo:
    """A plugin command as `avgen --help` lists it."""

    name: str
    help: str | None
    short_help: str | None
    hidden: bool
    deprecated: bool | str


@dataclass(frozen=True)
class ComponentIndex:
    """Every component (sorted as the registry sorts them), the broken plugins and the plugin commands."""

    components: list[ComponentInfo]
    broken: list[PluginInfo]
    commands: list[CommandInfo]

    def all(self, kind: str | None = None, pattern: str | None = None) -> list[ComponentInfo]:
        """Components of one kind and matching a glob pattern, like ``Registry.all``."""
        return [c for c in self.components
                if (kind is None or c.kind == kind) and (pattern is None or fnmatch.fnmatch(c.name, pattern))]

    def find(self, name: str) -> list[ComponentInfo]:
        """All components with this name, of any kind."""
        return [c for c in self.components if c.name == name]


def field_row(name: str, field: Any) -> tuple[str, str, str, str]:
    """(field, type, default, description) of one pydantic field, as `avgen show` prints it."""
    type_name = type_text(field.annotation)
    value = None if field.is_required() else field.get_default(call_default_factory=True)
    default = "required" if field.is_required() else repr(str(value) if isinstance(value, PurePath) else value)
    return name, type_name, default, field.description or ""


def type_text(annotation: Any) -> str:
    """A param's type as `avgen show` prints it: ``int``, ``int | None``; a Literal as its values, ``'fp32' | 'bf16'``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(value) for value in args)
    if origin in (typing.Union, types.UnionType):  # Optional[int] too (whose __name__ is 'Optional')
        return " | ".join("None" if a is type(None) else type_text(a) for a in args)
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def component_index() -> ComponentIndex:
    """The index: from the loaded plugins, the cache when its key still holds, or built now (and cached)."""
    from avgen._core import plugins

    if plugins.loaded():
        return _build()
    key = _key()
    path = _path()
    if key is not None and path is not None:
        cached = _read(path, key)
        if cached is not None:
            return cached
    index = _build()
    if key is not None and path is not None:
        _write(path, key, index)
    return index


def _build() -> ComponentIndex:
    """Load every plugin and describe its components and commands."""
    import click

    from avgen._core.plugins import get_plugins, register_commands

    plugins = get_plugins()
    components = [ComponentInfo.from_component(c) for c in plugins.registry.all()]
    broken = [p for p in plugins.info.values() if p.broken]  # before commands: as `avgen list` always showed them
    scratch = click.Group()
    register_commands(scratch)
    commands = [CommandInfo(name, cmd.help, cmd.short_help, bool(cmd.hidden), cmd.deprecated)
                for name, cmd in sorted(scratch.commands.items())]
    return ComponentIndex(components, broken, commands)


def _path() -> Path | None:
    from avgen._core.errors import AvgenError
    from avgen._core.paths import avgen_home

    try:
        return avgen_home() / INDEX_FILE
    except (OSError, AvgenError):  # no usable home folder: list and show work without the cache
        return None


def _key() -> str | None:
    """What the index depends on, hashed; None when it cannot be worked out (then nothing is cached)."""
    try:
        eps = sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.name, e.value))
        modules = sorted({"avgen"} | {ep.value.split(":")[0].split(".")[0].strip() for ep in eps})
        here = {"", os.getcwd()}  # the working directory (python -m, -c) changes all the time
        parts = [
            INDEX_FORMAT, __version__, sys.executable, os.environ.get("AVGEN_LOAD_PLUGINS"),
            [(ep.name, ep.value, ep.dist.name if ep.dist else None, ep.dist.version if ep.dist else None) for ep in eps],
            [(entry, _mtime(entry)) for entry in sys.path if entry not in here],
            {module: _module_files(module) for module in modules},
        ]
        return hashlib.sha256(json.dumps(parts).encode("utf-8")).hexdigest()
    except Exception:  # an odd entry point or path must not break the CLI: go without the cache
        return None


def _mtime(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def _module_files(module: str) -> list[tuple[str, int, int]] | None:
    """(path, size, mtime) of every file of a top-level module or package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    roots = list(spec.submodule_search_locations or []) or ([spec.origin] if spec.origin else [])
    files = []
    for root in roots:
        if os.path.isfile(root):
            found = [root]
        else:
            found = []
            for folder, dirs, names in os.walk(root):
                dirs[:] = sorted(d for d in dirs if d != "__pycache__")
                found += [os.path.join(folder, n) for n in sorted(names) if not n.endswith((".pyc", ".pyo"))]
        for path in found:
            try:
                stat = os.stat(path)
            except OSError:
                continue
            files.append((path, stat.st_size, stat.st_mtime_ns))
    return files


def _read(path: Path, key: str) -> ComponentIndex | None:
    """The cached index when it is intact and its key matches; None otherwise."""
    try:
        return _parse(path.read_text(encoding="utf-8"), key)
    except (OSError, UnicodeDecodeError):
        return None


def _parse(text: str, key: str) -> ComponentIndex | None:
    try:
        data = json.loads(text)
        if data.get("format") != INDEX_FORMAT or data.get("key") != key:
            return None
        index = ComponentIndex(
            [ComponentInfo(**c) for c in data["components"]],
            [PluginInfo(**p) for p in data["broken"]],
            [CommandInfo(**c) for c in data["commands"]],
        )
    except Exception:  # damaged in any way: rebuild it
        return None
    return index if _well_formed(index) else None


def _well_formed(index: ComponentIndex) -> bool:
    """Whether every field has the type the CLI prints (a damaged file can hold anything)."""
    def strings(values: Any, length: int) -> bool:
        return isinstance(values, list) and len(values) == length and all(isinstance(v, str) for v in values)

    for c in index.components:
        if not all(isinstance(v, str) for v in (c.kind, c.name, c.plugin, c.summary, c.version)):
            return False
        if not isinstance(c.card, dict) or not isinstance(c.card_rows, list) or not isinstance(c.params, list):
            return False
        if not all(strings(r, 2) for r in c.card_rows) or not all(strings(r, 4) for r in c.params):
            return False
    for p in index.broken:
        if not all(isinstance(v, str) for v in (p.name, p.module, p.distribution, p.version, p.error, p.where)):
            return False
        if not isinstance(p.partial, bool):
            return False
    for m in index.commands:
        if not (isinstance(m.name, str) and isinstance(m.hidden, bool) and isinstance(m.deprecated, (bool, str))
                and all(v is None or isinstance(v, str) for v in (m.help, m.short_help))):
            return False
    return True


def _write(path: Path, key: str, index: ComponentIndex) -> None:
    """Store the index atomically; a failure (read-only home, odd values) only costs the next start its speed."""
    from avgen._core.atomic import write_text

    try:
        text = json.dumps({"format": INDEX_FORMAT, "key": key, **asdict(index)}, indent=1)
        if _parse(text, key) == index:  # only what reads back exactly as the plugins gave it (e.g. no int version)
            write_text(path, text)
    except Exception:
        return
