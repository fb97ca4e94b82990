"""`avgen list` and `avgen show`: the components plugins registered, read from the component index."""

from __future__ import annotations

import json

import click
from rich.markup import escape
from rich.table import Table

from avgen._core.cli import cli, console, print_plugin_tracebacks
from avgen._core.errors import AvgenError
from avgen._core.registry import KINDS


def _kind(text: str) -> str | None:
    """'encoder' or 'encoders' -> 'encoder'; anything else -> None."""
    text = text.lower()
    for kind in KINDS:
        if text in (kind, kind + "s", kind + "es"):
            return kind
    return None


@cli.command("list", help=f"List registered components: KIND ({', '.join(KINDS)}) and a glob PATTERN such as "
                           "'*resnet*'.")
@click.argument("kind", required=False)
@click.argument("pattern", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option("--strict", is_flag=True, help="Exit with status 2 when a plugin failed to load (a plugin's tests, CI).")
def list_cmd(kind: str | None, pattern: str | None, as_json: bool, strict: bool) -> None:
    from avgen._core.index import component_index

    if kind is not None and _kind(kind) is None:
        if pattern is not None:
            raise AvgenError(f"unknown component kind '{kind}'; kinds are {', '.join(KINDS)}")
        kind, pattern = None, kind  # `avgen list '*resnet*'`
    index = component_index()
    components = index.all(_kind(kind) if kind else None, pattern)
    if not components and kind is None and pattern is not None:  # e.g. a misspelled kind: say so, not an empty table
        raise AvgenError(f"no component kind or name matches '{pattern}'; kinds are {', '.join(KINDS)} "
                         "(`avgen list` shows every component)")
    broken = index.broken
    if as_json:
        click.echo(json.dumps({
            "components": [{"kind": c.kind, "name": c.name, "plugin": c.plugin, "summary": c.summary,
                            "version": c.version} for c in components],
            "broken_plugins": [{"name": p.name, "module": p.module, "error": p.error} for p in broken],
        }, indent=2))
        _strict(strict, broken)
        return
    table = Table(title="avgen components", show_lines=False)
    for col in ("kind", "name", "plugin", "summary"):
        table.add_column(col, overflow="fold")
    for c in components:
        table.add_row(c.kind, c.name, c.plugin, c.summary)
    console.print(table)
    if not components:
        console.print("no components match" + (f" '{pattern}'" if pattern else ""))
    for p in broken:
        what = "plugin refused a component:" if p.partial else "broken plugin"  # partial: its other components work
        console.print(f"[red]{what}[/red] {p.name} ({p.module}, {p.distribution} {p.version}): {escape(p.error or '')}")
    if broken and (click.get_current_context().find_root().obj or {}).get("debug"):
        print_plugin_tracebacks()
    elif broken:
        console.print("where it failed (file and line): avgen --debug list", highlight=False)
    _strict(strict, broken)


def _strict(strict: bool, broken: list) -> None:
    """With --strict, a plugin that failed to load is an error (exit 2) after the listing."""
    if strict and broken:
        raise AvgenError(f"{len(broken)} plugin(s) failed to load: " + "; ".join(p.failure for p in broken))


@cli.command("show")
@click.argument("name")
@click.option("--kind", type=click.Choice(KINDS), help="Which kind, when several kinds share NAME.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def show_cmd(name: str, kind: str | None, as_json: bool) -> None:
    """Show a component's Params (field, type, default, description) and card."""
    from avgen._core.index import ComponentInfo, component_index

    index = component_index()
    found = [c for c in index.find(name) if kind in (None, c.kind)]
    if kind and not found:
        from avgen._core.plugins import get_component

        found = [ComponentInfo.from_component(get_component(kind, name))]  # the registry's error: close names
    if not found:
        from avgen._core.registry import close_names, unknown_message

        close = close_names(name, {c.name for c in index.components}, strict=bool(index.broken))
        raise AvgenError(unknown_message(f"no component named '{name}'", close, "avgen list",
                                         [p.failure for p in index.broken], name))
    for c in found:
        fields = c.params
        if as_json:
            click.echo(json.dumps({"kind": c.kind, "name": c.name, "plugin": c.plugin, "summary": c.summary,
                                   "version": c.version, "card": c.card,
                                   "params": [dict(zip(("field", "type", "default", "description"), r)) for r in fields]},
                                  indent=2, default=str))
            continue
        console.print(f"[bold]{c.kind} {c.name}[/bold] (plugin {c.plugin}, version {c.version}): {c.summary}")
        table = Table("field", "type", "default", "description", title="Params")
        for row in fields:
            table.add_row(*row)
        if not fields:
            console.print("no params")
        else:
            console.print(table)
        if c.card_rows:
            card = Table("card", "value")
            for k, v in c.card_rows:
                card.add_row(k, v)
            console.print(card)


