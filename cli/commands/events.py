"""`spot events`: what the fleet decided, and why (wakes, hibernations, failovers, the budget
gate, billing anomalies, failed samples)."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated

import typer

from ..output import print_json, print_table
from ..state import CliState
from .options import JsonOption

if TYPE_CHECKING:
    from spotinference.events import Event

SINCE_FORMATS = "a duration back from now (90s, 30m, 2h, 7d) or YYYY-MM-DD[THH:MM[:SS]] (UTC unless an offset is given)"
EMPTY_HINT = "no events yet: they appear when a tier wakes, hibernates or fails over, or the budget gate changes"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
FOLLOW_POLL_S = 1.0


def register(app: typer.Typer) -> None:
    app.command("events")(events)


def events(
    ctx: typer.Context,
    tier: Annotated[str | None, typer.Option("--tier", metavar="TIER", help="Only this tier's events (leaves out the fleet-wide ones: gate, sampler).")] = None,
    since: Annotated[str | None, typer.Option("--since", metavar="WHEN", help=f"From: {SINCE_FORMATS}.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, metavar="N", help="How many of the newest events.")] = 50,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events as they happen, until Ctrl-C.")] = False,
    json: JsonOption = False,
) -> None:
    """The fleet's decisions with their reasons: wakes, hibernations, failovers, gate changes, billing anomalies."""
    from spotinference.errors import InputError
    from spotinference.events import EventFollower, read_events

    state: CliState = ctx.obj
    start = parse_since(since, datetime.now(UTC)) if since else None
    store = state.store()
    found = read_events(store, since=start, tier=tier, last=limit)
    if tier is not None and not found and tier not in state.settings.tiers:
        known = ", ".join(sorted(state.settings.tiers)) or "none configured"
        raise InputError(f"--tier {tier!r}: no such tier in the config and no events for it (tiers: {known})")
    if json and not follow:
        print_json([e.to_dict() for e in found])
    elif json:
        for event in found:
            _json_line(event)
    elif found:
        print_table(None, ["at (UTC)", "kind", "tier", "what happened, and why"], [_cells(e) for e in found])
    if not found:
        typer.echo(EMPTY_HINT if start is None and tier is None else f"no events match: {EMPTY_HINT}", err=True)
    if not follow:
        return
    follower = EventFollower(store, since=start or datetime(1970, 1, 1, tzinfo=UTC), tier=tier)
    follower.seen(found)
    typer.echo("following new events (Ctrl-C to stop)", err=True)
    try:
        while True:
            time.sleep(FOLLOW_POLL_S)
            for event in follower.poll():
                if json:
                    _json_line(event)
                else:
                    typer.echo("  ".join(str(c) for c in _cells(event) if c))
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


def parse_since(text: str, now: datetime) -> datetime:
    from spotinference.errors import InputError

    match = _DURATION.match(text.strip().lower())
    if match:
        return now - timedelta(seconds=float(match[1]) * _UNIT_S[match[2]])
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"--since {text!r} is not a time: expected {SINCE_FORMATS}") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _cells(event: Event) -> tuple[str, str, str, str]:
    return (event.event_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"), event.kind, event.tier or "", event.message)


def _json_line(event: Event) -> None:
    import json as json_module

    from ..output import _default

    typer.echo(json_module.dumps(event.to_dict(), default=_default))
