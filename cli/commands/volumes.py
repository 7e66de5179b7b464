"""`spot volumes`: every volume in the configured accounts, and what it bills.

Also the line `spot status` ends with: what keeps billing while every node sleeps."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from ..output import Column, print_json, print_table, usd_per_hour
from ..state import CliState
from .options import JsonOption

if TYPE_CHECKING:
    from spotinference.fleet.volumes import SleepingBill

COLUMNS = [
    Column("tier", drop_rank=4), Column("volume", key=True), Column("GB", justify="right", drop_rank=3),
    Column("$/h", key=True, justify="right"), Column("attached to", drop_rank=5),
    Column("billing since", drop_rank=2), Column("id", drop_rank=0), Column("provider", drop_rank=1),
]


def volumes(ctx: typer.Context, json: JsonOption = False) -> None:
    """Every volume in the configured accounts: tier, size, $/h (the provider's billing rate),
    the VM it is attached to, billing since. Volumes bill until deleted, VMs or not."""
    from spotinference.fleet.context import FleetContext
    from spotinference.fleet.volumes import list_volumes

    from ..fleet_progress import show_provider_retries

    state: CliState = ctx.obj
    show_provider_retries(ctx, json_lines=json)
    context = FleetContext(state.settings, state.store())
    try:
        listing = list_volumes(context)
    finally:
        context.close()
    if json:
        print_json([row.to_json() for row in listing.volumes])
    elif not listing.volumes:
        typer.echo("no volumes in the configured accounts")
    else:
        print_table(None, COLUMNS, [
            (v.tier or "(not spot's)", v.name, v.size_gb, usd_per_hour(v.usd_per_hour), v.attached_to or "nothing",
             v.billing_since.strftime("%Y-%m-%d %H:%M") if v.billing_since else "", v.volume_id, v.provider)
            for v in listing.volumes
        ])
        total = sum((v.usd_per_hour for v in listing.volumes if v.usd_per_hour is not None), start=0)
        unknown = sum(1 for v in listing.volumes if v.usd_per_hour is None)
        count = len(listing.volumes)
        typer.echo(f"{count} volume{'s' if count != 1 else ''} bill ${usd_per_hour(total)}/h"
                   + (f" (+ {unknown} at an unknown rate)" if unknown else "")
                   + " until deleted (`spot down TIER --terminate --volumes`)")
    for problem in listing.problems:
        typer.echo(f"warning: {problem}", err=True)


def sleeping_line(bill: SleepingBill) -> str:
    """One line: what bills while nothing serves, its total $/h first, then its parts."""
    parts = []
    if bill.volumes:
        count, gb = len(bill.volumes), sum(v.size_gb or 0 for v in bill.volumes)
        parts.append((f"{count} volume{'s' if count != 1 else ''}, {gb} GB", _sum(v.usd_per_hour for v in bill.volumes)))
    if bill.hibernated:
        count = len(bill.hibernated)
        parts.append((f"{count} hibernated VM{'s' if count != 1 else ''} (disk, IP)", _sum(r for _, r in bill.hibernated)))
    if not parts:
        return "billing while asleep: nothing (no volumes, no hibernated VMs)"
    total = f"billing while asleep: ${usd_per_hour(bill.usd_per_hour)}/h"
    if len(parts) == 1:
        return f"{total} ({parts[0][0]})"
    return f"{total} = " + " + ".join(f"{what.split(' (')[0].split(',')[0]} ${usd_per_hour(rate)}/h" for what, rate in parts)


def _sum(rates):  # noqa: ANN001, ANN202 - Decimals, or None when any is unknown
    rates = list(rates)
    return None if any(r is None for r in rates) else sum(rates, start=0)
