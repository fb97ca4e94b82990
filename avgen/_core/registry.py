"""The component registry: kind -> name -> Component.

Components come only from plugins (entry-point group ``avgen``): ``avgen._core.plugins`` fills a
Registry lazily, once, and answers ``get_component``, ``list_components`` and ``create``.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, ValidationError

from avgen._core.card import KINDS, Card
from avgen._core.errors import AvgenError, DuplicateComponentError, UnknownComponentError, cut, shown


class NoParams(BaseModel):
    """Params of a component that takes none."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Component:
    """One registered component: how to build it and what it is."""

    kind: str
    name: str
    factory: Callable[..., Any]
    params: type[BaseModel]
    summary: str
    plugin: str
    card: Card = field(default_factory=Card)
    version: str = "1"
    # earlier version -> the defaults it had that this version changed (a run recorded at it keeps them)
    earlier_defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, hash=False, compare=False)

    def validate(self, values: Mapping[str, Any] | None = None, version: str | None = None) -> BaseModel:
        """Validate a params mapping with this component's Params (raises pydantic errors); at an earlier
        ``version`` the params it does not give take that version's defaults (``earlier_defaults``)."""
        values = dict(values or {})
        if version is not None and version != self.version:
            values = {**self.earlier_defaults.get(str(version), {}), **values}
        return self.params.model_validate(values)

    def build(self, params: BaseModel | Mapping[str, Any] | None = None, context: Any = None) -> Any:
        """``factory(params, context)`` from validated params (or a mapping) and an ``avgen.BuildContext``,
        checked against its kind's contract (one AvgenError naming the plugin otherwise)."""
        from avgen._core.components import BuildContext, check_contract

        if not isinstance(params, BaseModel):
            try:
                params = self.validate(params)
            except ValidationError as exc:
                raise AvgenError(
                    f"{self.kind} '{self.name}': {format_validation_error(exc)}"
                ) from exc
        context = context if isinstance(context, BuildContext) else BuildContext(**dict(context or {}))
        return check_contract(self.kind, self.factory(params, context), self.name, self.plugin)


class Registry:
    """Components by kind and name, with the plugin that registered each."""

    def __init__(self) -> None:
        self._components: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}

    def register(
        self,
        kind: str,
        plugin: str,
        name: str,
        factory: Callable[..., Any],
        params: type[BaseModel] = NoParams,
        summary: str = "",
        card: Card | Mapping[str, Any] | None = None,
        version: str = "1",
        earlier_defaults: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> Component:
        """Add a component; a second component of the same kind and name is an error.

        ``earlier_defaults``: for each earlier ``version`` whose param defaults this one changed, those defaults
        (``{"1": {"backend": "nnaudio"}}``), so that runs recorded at it resume and load as they were made.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown component kind {kind!r}; kinds are {', '.join(KINDS)}")
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
            raise ValueError(f"component name {name!r} must be letters, digits, '_', '-', '.'")
        if not (isinstance(params, type) and issubclass(params, BaseModel)):
            raise TypeError(f"{kind} '{name}' from plugin '{plugin}': params must be a pydantic model")
        existing = self._components[kind].get(name)
        if existing is not None:
            raise DuplicateComponentError(
                f"{kind} '{name}' is registered twice: by plugin '{existing.plugin}' and by "
                f"plugin '{plugin}'; uninstall one or rename its component"
            )
        try:
            inspect.signature(factory).bind(None, None)
        except TypeError:  # not callable, or not callable as factory(params, context)
            what = f"{factory.__name__}{inspect.signature(factory)}" if inspect.isfunction(factory) else repr(factory)
            raise TypeError(f"{kind} '{name}' from plugin '{plugin}': its factory {what} must take (params, context)") from None
        except ValueError:  # a callable whose signature Python cannot read (some builtins): not checked
            pass
        try:
            card = card if isinstance(card, Card) else Card.model_validate(dict(card or {}))
        except ValidationError as exc:
            raise ValueError(f"{kind} '{name}' from plugin '{plugin}': card: {format_validation_error(exc)}") from exc
        earlier = {str(v): dict(d) for v, d in (earlier_defaults or {}).items()}
        unknown = sorted({key for d in earlier.values() for key in d} - set(params.model_fields))
        if unknown or str(version) in earlier:
            what = f"names no param {', '.join(unknown)}" if unknown else f"lists its own version {version}"
            raise ValueError(f"{kind} '{name}' from plugin '{plugin}': earlier_defaults {what}")
        component = Component(kind, name, factory, params, summary, plugin, card, str(version), earlier)
        self._components[kind][name] = component
        return component

    def get(self, kind: str, name: str) -> Component:
        """The component of this kind and name, or an error listing the closest names."""
        if kind not in KINDS:
            raise UnknownComponentError(f"unknown component kind '{kind}'; kinds are {', '.join(KINDS)}")
        try:
            return self._components[kind][name]
        except KeyError:
            raise UnknownComponentError(
                unknown_message(f"unknown {kind} '{name}'", close_names(name, self._components[kind]),
                                f"avgen list {kind}")
            ) from None

    def find(self, name: str) -> list[Component]:
        """All components with this name, of any kind."""
        return [c for kind in KINDS if (c := self._components[kind].get(name)) is not None]

    def all(self, kind: str | None = None, pattern: str | None = None) -> list[Component]:
        """Components sorted by kind then name, filtered by kind and a glob pattern."""
        kinds = KINDS if kind is None else (kind,)
        out = []
        for k in kinds:
            for name in sorted(self._components[k], key=_natural_key):
                if pattern is None or fnmatch.fnmatch(name, pattern):
                    out.append(self._components[k][name])
        return out


def close_names(name: str, names: Any, strict: bool = False) -> list[str]:
    """Up to 3 of ``names`` that ``name`` may be a misspelling of, closest first; ``strict``: only near ones (when a
    plugin failed to load, the likelier cause, a loose guess such as 'onset' for 'cosine_topk' only misleads)."""
    return difflib.get_close_matches(name, sorted(names), n=3, cutoff=0.75 if strict else 0.5)


def unknown_message(head: str, close: Sequence[str], see: str, failures: Sequence[str] = (), name: str = "") -> str:
    """One line for a name nothing registered: ``head`` ("unknown generator 'gru'"), the close names and the command
    that lists them. A plugin that failed to load (``failures``: ``PluginInfo.failure`` lines) is the likely cause,
    so it comes first: 'plugin ... failed to load: ...; unknown generator 'gru' (that plugin may have registered
    it; did you mean ...? see `avgen list generator`)'. Where a plugin refused ``name`` itself when it registered (a
    factory of the wrong signature), that line alone, and that it is why."""
    refused = [line for line in failures if f" '{name}' from plugin " in line] if name else []
    if refused:
        return f"{refused[0]} ('{name}' is not available until that is fixed)"
    guess = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    if not failures:
        return f"{head}; {guess}(see `{see}`)" if guess else f"{head} (see `{see}`)"
    which = "that plugin" if len(failures) == 1 else "one of those plugins"
    return f"{'; '.join(failures)}; {head} ({which} may have registered it; {guess}see `{see}`)"


def _natural_key(text: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """Pydantic's errors as one line: 'key: message; key: message'."""
    parts = []
    for err in exc.errors():
        loc = cut(".".join(str(p) for p in (prefix, *err["loc"]) if p != ""))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif "input" in err and err["type"] not in ("model_type",):
            msg = f"{msg} (got {shown(err['input'])})"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)
