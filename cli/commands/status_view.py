"""What `spot status` shows, once or refreshed in place (`--watch`): the gateway's view of its
tiers, one row per node fitted to the terminal, and what keeps billing while everything sleeps."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

from ..output import Column, build_table, console, print_json, usd_per_hour

if TYPE_CHECKING:
    from spotinference.fleet.context import FleetContext


STATUS_COLUMNS = [
    Column("tier", drop_rank=5), Column("node", key=True), Column("state", key=True),
    Column("provider id", drop_rank=0), Column("ip", drop_rank=4), Column("gpu", drop_rank=2),
    Column("$/h", key=True, justify="right"), Column("up since", drop_rank=3), Column("last request", drop_rank=1),
]


def show_status(context: FleetContext, tier: str | None, *, json: bool) -> None:
    from spotinference.fleet.status import fleet_status

    if json:
        print_json([row.to_json() for row in fleet_status(context, tier)])
        return
    from rich.text import Text

    out = console()
    for part in _status_view(context, tier, width=out.width):
        out.print(part, soft_wrap=isinstance(part, Text))  # a line stays one line in a pipe


def _status_view(context: FleetContext, tier: str | None, *, width: int) -> list:
    """What `spot status` shows, as rich renderables fitted to ``width``: the gateway's tiers, one
    row per node, and the line of what keeps billing while everything sleeps."""
    from rich.text import Text

    from spotinference.fleet.status import fleet_status, gateway_view

    rows = fleet_status(context, tier)
    parts: list = []
    view = gateway_view(context.settings)
    if view is not None:
        parts += _tiers_view(view, tier, width)
    if not rows:
        parts.append(Text("no nodes" + (f" in tier {tier}" if tier else "") + " (create them with `spot up TIER`)"))
    else:
        parts.append(build_table(None, STATUS_COLUMNS, [
            (
                r.tier if r.configured else f"{r.tier} (not configured)", r.name, r.state.value, r.provider_id, r.ip,
                f"{r.gpu_count}× {r.gpu}" if r.gpu else r.flavor,
                usd_per_hour(r.usd_per_hour),
                r.up_since.strftime("%Y-%m-%d %H:%M:%S") if r.up_since else "",
                r.last_request.strftime("%Y-%m-%d %H:%M:%S") if r.last_request else "",
            )
            for r in rows
        ], width=width))
    parts.append(Text(_asleep_line(context, tier, rows)))
    return parts


def _asleep_line(context: FleetContext, tier: str | None, rows: list) -> str:
    from spotinference.fleet.volumes import list_volumes, sleeping_bill
    from spotinference.providers import ProviderError

    from .volumes import sleeping_line

    try:
        listing = list_volumes(context, tier, tiers_accounts_only=True)  # the accounts status reads
    except ProviderError as exc:
        return f"billing while asleep: unknown (the volume list failed: {exc.message})"
    line = sleeping_line(sleeping_bill(listing.volumes, rows))
    return line + (f" (not counted: {'; '.join(listing.problems)})" if listing.problems else "")


def _tiers_view(view: dict, only: str | None, width: int) -> list:
    """What the running gateway sees per tier: held requests, wakes, idle countdowns, the gate."""
    from rich.text import Text

    parts: list = []
    tiers = [t for t in view.get("tiers", []) if only is None or t["tier"] == only]
    if tiers:
        def seconds(value: float | None) -> str:
            return "" if value is None else f"{value:.0f} s"

        def when(value: float | None) -> str:
            return "" if not value else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(value))

        parts.append(build_table(
            "tiers (from the gateway)",
            [Column("tier", key=True), Column("state", drop_rank=6), Column("serving", drop_rank=5),
             Column("in flight", drop_rank=4), Column("held", drop_rank=3), Column("waking for", drop_rank=2),
             Column("last request", drop_rank=0), Column("hibernates in", drop_rank=1)],
            [(t["tier"], t["state"] + (f" ({t['degraded_reason']})" if t.get("degraded_reason") else ""),
              len(t["serving_nodes"]), t["in_flight"], t["held_requests"], seconds(t["wake_elapsed_s"]),
              when(t["last_request_at"]), seconds(t["idle_countdown_s"])) for t in tiers],
            width=width,
        ))
    gate = view.get("budget_gate")
    if gate:
        parts.append(Text(f"budget gate: {'open' if gate['open'] else 'CLOSED'} ({gate['reason']}): {gate['message']}"))
    return parts


def watch_status(context: FleetContext, tier: str | None, *, interval_s: float, json: bool) -> None:
    """Refresh until Ctrl-C, which ends the watch normally (exit 0, as `spot logs --follow`).
    A refresh that fails after the first is shown in place of the view and retried."""
    import json as json_module
    import signal
    import threading

    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    from spotinference.errors import SpotError

    out = console()
    stopped = threading.Event()
    previous = signal.getsignal(signal.SIGINT)

    def on_ctrl_c(signum: int, frame: object) -> None:
        stopped.set()
        signal.default_int_handler(signum, frame)

    if previous is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, on_ctrl_c)

    def view() -> Group:
        stamp = Text(f"every {interval_s:g} s, Ctrl-C to stop · {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC",
                     style="dim")
        return Group(stamp, *_status_view(context, tier, width=out.width))

    def snapshot() -> str:
        from spotinference.fleet.status import fleet_status

        return json_module.dumps([row.to_json() for row in fleet_status(context, tier)], default=str)

    def failed(exc: SpotError) -> Text:
        return Text(f"refresh failed at {time.strftime('%H:%M:%S', time.gmtime())} UTC: {exc.message} (retrying)",
                    style="bold red")

    try:
        # The first refresh failing is the command's error; a later one is shown and retried.
        if json or not out.is_terminal:
            # Not a screen to redraw: one snapshot after another (JSON lines with --json).
            shown = snapshot() if json else view()
            while True:
                if json:
                    sys.stdout.write(shown + "\n")
                    sys.stdout.flush()
                else:
                    out.print(shown)
                    out.print()
                time.sleep(interval_s)
                try:
                    shown = snapshot() if json else view()
                except SpotError as exc:
                    shown = json_module.dumps({"error": exc.message}) if json else failed(exc)
        last = view()
        with Live(last, console=out, auto_refresh=False, transient=False) as live:
            while True:
                time.sleep(interval_s)
                try:
                    last = view()
                    live.update(last, refresh=True)
                except SpotError as exc:
                    live.update(Group(failed(exc), last), refresh=True)  # the last good view, marked stale
    except KeyboardInterrupt:
        return
    except Exception:
        if stopped.is_set():
            return  # a library turned the Ctrl-C into an error of its own (DuckDB: "Query interrupted")
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
