"""`spot init` and `spot doctor`: getting a machine ready."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..output import print_json, print_table
from ..state import CliState
from .options import JsonOption


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    app.command("doctor")(doctor)


def init(
    ctx: typer.Context,
    path: Annotated[
        Path | None,
        typer.Argument(help="Where to write it (default: --config, $SPOT_CONFIG, or ./spot.toml).", show_default=False),
    ] = None,
    example: Annotated[
        str, typer.Option("--example", help="Start from 'sim' (local emulator) or 'hyperstack'.")
    ] = "sim",
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    json: JsonOption = False,
) -> None:
    """Write a starter config file (refuses to overwrite without --force)."""
    import os

    from spotinference.starter import write_starter_config

    state: CliState = ctx.obj
    target = path or state.config_path or Path(os.environ.get("SPOT_CONFIG") or "spot.toml")
    written = write_starter_config(target, example=example, force=force)
    if json:
        print_json({"path": str(written), "example": example})
    else:
        typer.echo(f"wrote {written} (from the {example!r} example); check it with `spot doctor`")


def doctor(ctx: typer.Context, json: JsonOption = False) -> None:
    """Check config, data directory, database, credentials and SSH key; exit 1 if any fails."""
    from spotinference.doctor import run_checks

    state: CliState = ctx.obj
    checks = run_checks(state.config_path)
    ok = all(c.ok for c in checks)
    if json:
        print_json({"ok": ok, "checks": [c.as_dict() for c in checks]})
    else:
        rows = [(_mark(c), c.name, c.detail + ("" if c.ok or not c.fix else f"\nfix: {c.fix}")) for c in checks]
        print_table("spot doctor", ["", "check", "result"], rows)
    if not ok:
        raise typer.Exit(1)


def _mark(check) -> str:  # noqa: ANN001 - a doctor.Check
    # A warning (something not running yet) is not a failure, but must not look like a pass.
    if not check.ok:
        return "✗"
    return "!" if getattr(check, "warning", False) else "✓"
