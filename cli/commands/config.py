"""`spot config show` and `spot config check`: the merged settings, where each came from, and whether they hold."""

from __future__ import annotations

import json as jsonlib
from typing import Annotated

import typer

from ..output import print_json, print_table
from ..state import CliState
from .options import JsonOption

BAD_CONFIG_EXIT = 2  # the exit code of every other command on a bad config

app = typer.Typer(help="The settings in effect: where each value came from, and whether they hold.",
                  no_args_is_help=True)


def register(parent: typer.Typer) -> None:
    parent.add_typer(app, name="config")


@app.command("show")
def show(
    ctx: typer.Context,
    prefix: Annotated[str | None, typer.Argument(
        metavar="[KEY]", help="Only the settings under this key (gateway, tiers.demo, ...).", show_default=False,
        autocompletion=lambda incomplete: _complete_keys(incomplete))] = None,
    json: JsonOption = False,
) -> None:
    """Print every setting in effect with where it came from; secrets are masked."""
    from spotinference.config.provenance import explain_settings
    from spotinference.errors import InputError

    state: CliState = ctx.obj
    _, source, found = explain_settings(state.config_path)
    if prefix:
        wanted = prefix.strip(".").lower()
        found = [o for o in found if o.key.lower() == wanted or o.key.lower().startswith(wanted + ".")]
        if not found:
            raise InputError(f"no setting is named {prefix!r} or lies under it",
                             hint="run `spot config show` for every key")
    if json:
        print_json({"config": source.label, "config_from": source.how, "settings": [o.as_dict() for o in found]})
        return
    typer.echo(f"config: {source.label} (from {source.how}); precedence: SPOT_* environment, then the file, then defaults")
    # Plain lines, not a table: a key, a value or a path must never be cut at the terminal's width.
    width = max(len(o.key) for o in found) + len(" = ") + max(len(_value(o.value)) for o in found)
    for o in found:
        line = f"{o.key} = {_value(o.value)}"
        typer.echo(f"{line:<{min(width, 60)}}  # {o.where}")


def _complete_keys(incomplete: str) -> list[str]:
    """Shell completion for KEY: the sections and keys of the settings in effect, one level at a time."""
    from spotinference.config.provenance import explain_settings

    try:
        _, _, found = explain_settings(None)
    except Exception:  # noqa: BLE001 - a broken config completes nothing, it does not fail the shell
        return []
    depth = incomplete.count(".") + 1
    offers = {".".join(o.key.split(".")[:depth]) for o in found}
    return sorted(k for k in offers if k.startswith(incomplete))


def _value(value: object) -> str:
    """TOML-like: strings quoted, true/false, lists in brackets; an unset value says so."""
    return "(not set)" if value is None else jsonlib.dumps(value)


@app.command("check")
def check(ctx: typer.Context, json: JsonOption = False) -> None:
    """Validate the config and its credentials as `spot doctor` would, without probing anything; exit 2 if wrong."""
    from spotinference.doctor import run_config_checks

    from .setup import _mark

    state: CliState = ctx.obj
    checks = run_config_checks(state.config_path)
    ok = all(c.ok for c in checks)
    if json:
        print_json({"ok": ok, "checks": [c.as_dict() for c in checks]})
    else:
        print_table("spot config check", ["", "check", "result"],
                    [(_mark(c), c.name, c.detail + ("" if c.ok or not c.fix else f"\nfix: {c.fix}")) for c in checks])
    if not ok:
        raise typer.Exit(BAD_CONFIG_EXIT)
