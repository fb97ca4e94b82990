"""Plugin loading: entry-point group ``avgen``, lazily and once; broken plugins are reported.

The loaded plugins fill the component registry, which ``get_component``, ``list_components``
and ``create`` (exported as ``avgen.get_component`` ...) answer from.

``AVGEN_LOAD_PLUGINS=name1,name2`` loads only those entry points (empty: none).
"""

from __future__ import annotations

import difflib
import importlib.metadata
import os
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any

import pluggy

from avgen._core import hookspecs
from avgen._core.errors import UnknownComponentError
from avgen._core.registry import KINDS, Component, Registry, close_names, unknown_message

ENTRY_POINT_GROUP = "avgen"

# hook name -> component kind
REGISTER_HOOKS: dict[str, str] = {
    "register_encoders": "encoder",
    "register_representations": "representation",
    "register_generators": "generator",
    "register_losses": "loss",
    "register_datasets": "dataset",
    "register_metrics": "metric",
    "register_detectors": "detector",
    "register_indexes": "index",
}
assert sorted(REGISTER_HOOKS.values()) == sorted(KINDS)


@dataclass(frozen=True)
class PluginInfo:
    """A plugin found through an entry point: where it came from and whether it loaded."""

    name: str
    module: str
    distribution: str
    version: str
    error: str | None = None
    where: str = field(default="", compare=False, repr=False)  # the failure's traceback, for avgen --debug
    partial: bool = False  # it loaded, but refused components (named in ``error``); its others are registered

    @property
    def broken(self) -> bool:
        return self.error is not None

    @property
    def failure(self) -> str:
        """The one line that says so: "plugin 'gru' (avgen-gru 0.1.0) failed to load: ModuleNotFoundError: ..."."""
        what = "refused a component" if self.partial else "failed to load"
        return f"plugin '{self.name}' ({self.distribution} {self.version}) {what}: {self.error}"


class Plugins:
    """The pluggy manager, the registry it filled, and what happened to each plugin."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("avgen")
        self.pm.add_hookspecs(hookspecs)
        self.registry = Registry()
        self.info: dict[str, PluginInfo] = {}

    def load_entry_points(self) -> None:
        """Import every allowed entry point; a failing one is recorded, the rest still load."""
        allow = os.environ.get("AVGEN_LOAD_PLUGINS")
        allowed = None if allow is None else {n.strip() for n in allow.split(",") if n.strip()}
        seen: set[str] = set()
        for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if ep.name in seen or (allowed is not None and ep.name not in allowed):
                continue
            seen.add(ep.name)
            dist = ep.dist.name if ep.dist is not None else "?"
            version = ep.dist.version if ep.dist is not None else "?"
            try:
                module = ep.load()
                self.pm.register(module, name=ep.name)
                self._check_hooks(module, ep.name)
                self.pm.check_pending()
            except Exception as exc:  # a broken plugin must not take the others down
                if self.pm.has_plugin(ep.name):
                    self.pm.unregister(name=ep.name)
                self.info[ep.name] = PluginInfo(ep.name, ep.value, dist, version, _one_line(exc), traceback.format_exc())
                continue
            self.info[ep.name] = PluginInfo(ep.name, ep.value, dist, version)

    def _check_hooks(self, module: Any, name: str) -> None:
        """Every hook the plugin implements is one of avgen's; else a PluginValidationError naming the closest one
        (pluggy's own names the module by its repr)."""
        known = sorted(caller.name for caller in vars(self.pm.hook).values() if caller.has_spec())
        for caller in self.pm.get_hookcallers(module) or []:
            if caller.has_spec() or all(impl.optionalhook for impl in caller.get_hookimpls() if impl.plugin_name == name):
                continue
            close = difflib.get_close_matches(caller.name, known, n=1, cutoff=0.8)
            hint = f"did you mean '{close[0]}'?" if close else f"avgen's hooks are {', '.join(known)}"
            raise pluggy.PluginValidationError(module, f"unknown hook '{caller.name}'; {hint}")

    def collect_components(self) -> None:
        """Call every register_* hook, attributing each component to its plugin."""
        for hook_name, kind in REGISTER_HOOKS.items():
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                plugin = impl.plugin_name
                if self.info.get(plugin) is not None and self.info[plugin].broken and not self.info[plugin].partial:
                    continue

                def register(name: str, factory: Any, *args: Any, _kind: str = kind, _plugin: str = plugin,
                             _hook: str = hook_name, **kwargs: Any):
                    try:
                        return self.registry.register(_kind, _plugin, name, factory, *args, **kwargs)
                    except (TypeError, ValueError) as exc:  # this component refused; the plugin's others register
                        self._refused(_plugin, f"{_hook}: {_one_line(exc)}")
                        return None

                try:
                    impl.function(register=register)
                except Exception as exc:
                    from avgen._core.errors import DuplicateComponentError

                    if isinstance(exc, DuplicateComponentError):
                        raise
                    self.mark_broken(plugin, f"{hook_name} failed: {_one_line(exc)}")

    def _refused(self, plugin: str, reason: str) -> None:
        """Record a component the registry refused (a factory's signature, its params, its card) on its plugin."""
        old = self.info.get(plugin)
        self.mark_broken(plugin, f"{old.error}; {reason}" if old is not None and old.error else reason, partial=True)

    def mark_broken(self, plugin: str, error: str, partial: bool = False) -> None:
        """Record why ``plugin`` is broken (or, ``partial``, which components it had refused), with the traceback
        being handled now, keeping where it came from."""
        old = self.info.get(plugin)
        self.info[plugin] = PluginInfo(plugin, old.module if old else "?", old.distribution if old else "?",
                                       old.version if old else "?", error, traceback.format_exc(), partial=partial)


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return " ".join(text.split())


_lock = threading.RLock()
_plugins: Plugins | None = None


def get_plugins() -> Plugins:
    """The loaded plugins (loaded on first use, once per process)."""
    global _plugins
    with _lock:
        if _plugins is None:
            plugins = Plugins()
            plugins.load_entry_points()
            plugins.collect_components()
            _plugins = plugins
        return _plugins


def loaded() -> bool:
    """Whether this process has loaded the plugins already."""
    return _plugins is not None


def get_registry() -> Registry:
    return get_plugins().registry


def get_component(kind: str, name: str) -> Component:
    """The registered component of this kind and name; when there is none and a plugin failed to load, the error
    names that plugin and why first (the component may be one it would have registered), then the close names."""
    plugins = get_plugins()
    try:
        return plugins.registry.get(kind, name)
    except UnknownComponentError:
        failures = [info.failure for info in plugins.info.values() if info.broken]
        if not failures or kind not in KINDS:
            raise
        close = close_names(name, [c.name for c in plugins.registry.all(kind)], strict=True)
        raise UnknownComponentError(unknown_message(f"unknown {kind} '{name}'", close, f"avgen list {kind}",
                                                    failures, name)) from None


def broken_plugins() -> list[PluginInfo]:
    """The plugins that failed to load (import, hooks or a register_* hook), each with ``name`` (the entry point),
    ``module``, ``distribution``, ``version``, ``error`` and ``failure``, the one line saying so:
    "plugin 'gru' (avgen-gru 0.1.0) failed to load: ModuleNotFoundError: ..."."""
    return [info for info in get_plugins().info.values() if info.broken]


def failure_traceback(info: PluginInfo) -> str:
    """Where a broken plugin failed, as a traceback (``avgen --debug`` prints it): the one kept when it failed to
    load in this process, else its module imported again (a list read from the component index imported none)."""
    if info.where:
        return info.where
    try:
        importlib.import_module(info.module.split(":", 1)[0])
    except Exception:
        return traceback.format_exc()
    return ""


def component_source(kind: str, name: str) -> dict[str, str]:
    """Where a registered component comes from: its name, plugin, distribution and the distribution's version
    (what an exported model records so another machine knows what to ``pip install``)."""
    component = get_component(kind, name)
    info = get_plugins().info.get(component.plugin)
    return {"name": name, "plugin": component.plugin, "distribution": info.distribution if info else "?",
            "version": info.version if info else "?"}


def list_components(kind: str | None = None, pattern: str | None = None) -> list[Component]:
    """Registered components, optionally of one kind and matching a glob pattern."""
    if kind is not None and kind not in KINDS:
        raise UnknownComponentError(f"unknown component kind '{kind}'; kinds are {', '.join(KINDS)}")
    return get_registry().all(kind, pattern)


def create(kind: str, name: str, context: Any = None, **params: Any) -> Any:
    """Build a registered component, like ``timm.create_model``; None params are dropped.

    ``context`` is an ``avgen.BuildContext`` (or a mapping of its fields).
    """
    component = get_component(kind, name)
    values = {k: v for k, v in params.items() if v is not None}
    return component.build(values, context)


def reset() -> None:
    """Forget loaded plugins so the next access reloads them (for tests)."""
    global _plugins
    with _lock:
        _plugins = None


def register_commands(cli: Any) -> None:
    """Let every loaded plugin add its commands; a failing plugin is marked broken."""
    plugins = get_plugins()
    for impl in plugins.pm.hook.register_commands.get_hookimpls():
        try:
            impl.function(cli=cli)
        except Exception as exc:
            plugins.mark_broken(impl.plugin_name, f"register_commands failed: {_one_line(exc)}")


def first_answer(hook: str, **kwargs: Any) -> Any:
    """The first plugin's answer to a ``firstresult`` hook (``open_model``, ``open_library``), or None."""
    return getattr(get_plugins().pm.hook, hook)(**kwargs)
