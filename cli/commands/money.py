"""`spot sample`, `spot cost`, `spot cron`: billing samples and the invoice-true cost report."""

from __future__ import annotations

import csv
import sys
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import click
import typer
from typer.core import TyperGroup

from spotinference.jsonable import jsonable

from ..output import Column, build_table, print_json
from ..state import CliState
from .options import JsonOption

if TYPE_CHECKING:
    from spotinference.costs import CostReport

BY_CHOICES = ("day", "tier", "model", "endpoint", "key", "resource", "type", "utilisation")
INCOMPLETE_EXIT = 9  # `spot cost --strict` on a window that is not complete (3 is reserved: it meant "not built yet")
_FORMATS = "YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS] (UTC unless an offset is given)"


class _CostGroup(TyperGroup):
    """`spot cost` runs the report; `spot cost reconcile` is a subcommand. The report's optional
    FILE.png argument (after --plot) would swallow a subcommand's name, so a first word that names
    a subcommand is that subcommand."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] in self.commands:
            super().parse_args(ctx, [])
            ctx._protected_args, ctx.args = [args[0]], args[1:]
            return ctx.args
        return super().parse_args(ctx, args)


def register(app: typer.Typer) -> None:
    cost_app = typer.Typer(cls=_CostGroup, invoke_without_command=True, rich_markup_mode=None,
                           add_completion=False)
    cost_app.callback()(cost)
    cost_app.command("reconcile")(reconcile)
    app.add_typer(cost_app, name="cost")


def _moment(option: str, text: str | None) -> datetime | None:
    from spotinference.errors import InputError

    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"{option} {text!r} is not a date or time: expected {_FORMATS}") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def cost(
    ctx: typer.Context,
    days: Annotated[float | None, typer.Option("--days", help="Trailing window in days, ending now (default 7).", show_default=False)] = None,
    since: Annotated[str | None, typer.Option("--since", help=f"Window start: {_FORMATS}.")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Window end (exclusive), same formats; default now.")] = None,
    by: Annotated[str | None, typer.Option("--by", help=f"Break the window down by: {', '.join(BY_CHOICES)}.",
                                           autocompletion=lambda incomplete: [c for c in BY_CHOICES if c.startswith(incomplete)])] = None,
    json: JsonOption = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV (the breakdown rows with --by, else the headline).")] = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print a publishable economics page in Markdown.")] = False,
    plot: Annotated[bool, typer.Option("--plot", help="Plot spend and cost per million output tokens per day in the terminal; `--plot FILE.png` (or .svg, .pdf) writes a chart.")] = False,
    plot_file: Annotated[Path | None, typer.Argument(metavar="[FILE.png|.svg|.pdf]", help="With --plot: the chart file to write.", show_default=False)] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 9 when the window is not complete (unobservable, gaps, or billing behind).")] = False,
    focus: Annotated[Path | None, typer.Option("--focus", metavar="FILE.csv|FILE.parquet", show_default=False,
                                               help="Write the window's fleet spend as FOCUS 1.2 rows (one per resource per hour).")] = None,
) -> None:
    """Invoice-true cost per million tokens: billed spend between samples over tokens served."""
    if ctx.invoked_subcommand is not None:
        return
    from spotinference.costs import Window, report, trailing_window
    from spotinference.errors import InputError

    if by is not None and by not in BY_CHOICES:
        raise InputError(f"--by {by!r} is not one of: {', '.join(BY_CHOICES)}")
    if sum([json, as_csv, markdown]) > 1:
        raise InputError("choose one of --json, --csv, --markdown")
    if focus is not None and (json or as_csv or markdown or plot or by is not None):
        raise InputError("--focus writes a file of its own: leave out --json, --csv, --markdown, --plot and --by")
    if plot_file is not None and not plot:
        raise InputError(f"{plot_file} is only taken after --plot (spot cost --plot FILE.png)")
    if days is not None and since is not None:
        raise InputError("give either --days or --since/--until, not both")
    if plot_file is not None:
        from spotinference.costs.plot import check_target

        check_target(plot_file)  # a bad target is said before the report runs
    if focus is not None:
        from spotinference.costs.focus import check_target as check_focus_target

        check_focus_target(focus)
    now = datetime.now(UTC)
    start, end = _moment("--since", since), _moment("--until", until)
    if start is not None:
        window = Window(start, end or now)
    elif end is not None:
        window = trailing_window(7 if days is None else days, end)
    else:
        window = trailing_window(7 if days is None else days, now)
    from spotinference.billing.runs import sampled_providers

    state: CliState = ctx.obj
    store = state.store()
    settings = state.settings
    options = {"now": now, "accounts": sampled_providers(settings) if settings.providers else [],
               "fresh_within_s": float(settings.budget.max_sample_age_s)}
    if plot:
        result = report(store, window, by="day", **options)
        _plot(result, plot_file)
    elif focus is not None:
        result = report(store, window, **options)
        _focus(store, result, focus)
    else:
        result = report(store, window, by=by, **options)
        if json:
            print_json(jsonable(result.to_dict()))
        elif as_csv:
            _csv(result)
        elif markdown:
            sys.stdout.write(_markdown(result))
        else:
            _table(result)
    if strict and not result.complete:
        raise typer.Exit(INCOMPLETE_EXIT)


def reconcile(
    ctx: typer.Context,
    since: Annotated[str | None, typer.Option("--since", help=f"From this provider hour: {_FORMATS}; default: the first sample.")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Up to this provider hour (exclusive), same formats; default: the last sample.")] = None,
    tolerance_usd: Annotated[str, typer.Option("--tolerance-usd", help="Largest unexplained difference per resource-day, in USD.")] = "0.01",
    json: JsonOption = False,
) -> None:
    """Check our spend against the provider's own billing history, per resource and provider hour.

    Exits 8 when a resource-day differs by more than the tolerance (or could not be compared).
    """
    from decimal import InvalidOperation

    from spotinference.costs.reconcile import reconcile as run_reconcile
    from spotinference.errors import InputError

    try:
        tolerance = Decimal(tolerance_usd.strip())
    except InvalidOperation:
        raise InputError(f"--tolerance-usd {tolerance_usd!r} is not a number of dollars") from None
    if not tolerance.is_finite() or tolerance < 0:
        raise InputError(f"--tolerance-usd {tolerance_usd!r} must be 0 or more")
    start, end = _moment("--since", since), _moment("--until", until)
    if start is not None and end is not None and end <= start:
        raise InputError("--until must be after --since")
    state: CliState = ctx.obj
    from ..fleet_progress import show_provider_retries

    show_provider_retries(ctx, json_lines=json)
    result = run_reconcile(state.store(), state.settings, since=start, until=end, tolerance_usd=tolerance)
    if json:
        print_json(jsonable(result.to_dict()))
    else:
        _reconcile_table(result)
    failure = result.failure()
    if failure is not None:
        raise failure


# -- formatting ---------------------------------------------------------------------------------

def _signed_usd(value: Decimal | None) -> str:
    if value is None:
        return "unknown"
    shown = value.quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)
    text = _usd(abs(shown), 6)
    return text if shown == 0 else ("-" if shown < 0 else "+") + text


_LIST_EVERY_HOUR_UP_TO = 48  # resource-hours; past that, only those that differ or had an anomaly


def _reconcile_table(r: Any) -> None:
    from rich.table import Table

    from ..output import console

    con = console()
    hours = r.hours
    matched = sum(h.status == "matched" for h in hours)
    carried = sum(h.status == "carried" for h in hours)
    lines = [
        ("resource-hours", f"{len(hours):,}: {matched:,} matched, {carried:,} carried across an hour boundary, "
                           f"{len(hours) - matched - carried:,} mismatched"),
        ("ours (the ledger)", _usd(r.ours_usd, 6)),
        ("the provider's history", _usd(r.provider_usd, 6)),
        ("difference", f"{_signed_usd(r.difference_usd)} (of which {_signed_usd(r.carried_usd)} read across an hour "
                       "boundary, before our first or after our last sample)"),
        ("unexplained", f"{_signed_usd(r.unexplained_usd)} (tolerance ${r.tolerance_usd} per resource-day)"),
    ]
    for credit in r.credits:
        figure = _usd(credit.credit_usd) if credit.error is None else f"unavailable ({credit.error})"
        lines.append((f"credit balance ({credit.provider})", f"{figure}: {credit.note}"))
    # Plain lines, not a table: a figure must never be wrapped or cut at the terminal's width.
    typer.echo("spot cost reconcile: our samples against the provider's billing history")
    for label, value in lines:
        typer.echo(f"  {label + ':':<24}{value}")
    every = len(hours) <= _LIST_EVERY_HOUR_UP_TO
    shown = hours if every else [h for h in hours if h.status != "matched" or h.anomalies]
    if shown:
        typer.echo("hours (the provider's clock, UTC):" if every else
                   f"hours that differ or had an anomaly ({len(hours) - len(shown):,} matched hours not listed: "
                   "--json lists every hour):")
    for h in shown:  # one line each, so that no column is cut at the terminal's width
        res = h.resource
        label = f"{res.provider} {res.resource_type} {res.resource_id}" + (f" ({res.name})" if res.name else "")
        why = f"{h.status}" + (f", cause: {h.cause}" if h.cause else "")
        if h.anomalies:
            why += f"; anomalies recorded: {', '.join(h.anomalies)}"
        typer.echo(f"  {label}  {h.hour_start:%Y-%m-%d %H:00}  ours {_usd(h.ours_usd, 6)}  provider "
                   f"{_usd(h.provider_usd, 6)}  difference {_signed_usd(h.difference_usd)}  unexplained "
                   f"{_signed_usd(h.unexplained_usd)}  {why}")
    days = Table(title="per resource-day", title_justify="left")
    for col in ("resource", "day", "ours", "provider", "unexplained", "verdict"):
        days.add_column(col)
    for d in r.days:
        res = d.resource
        days.add_row(f"{res.provider} {res.resource_type} {res.resource_id}", d.day.isoformat(), _usd(d.ours_usd, 6),
                     _usd(d.provider_usd, 6), _signed_usd(d.unexplained_usd),
                     "matches" if d.within_tolerance else "DIFFERS")
    con.print(days if r.days else "no samples placed on the provider's clock in this span: run `spot sample` "
              "(every minute: spot cron), or widen --since/--until")
    for u in r.unavailable:
        res = u.resource
        typer.echo(f"NOT COMPARED: {res.provider} {res.resource_type} {res.resource_id}: no provider history ({u.error})")


def _usd(value: Decimal | None, places: int = 2) -> str:
    if value is None:
        return "unobservable"
    return f"${value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP):,}"


def _rate(value: Decimal | None, observable: bool) -> str:
    if not observable:
        return "unobservable"
    return "undefined (no output tokens)" if value is None else f"{_usd(value)} / M output tokens"


def _cell(key: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Decimal):
        places = 4 if key in ("statement_usd", "reservations_released_usd") else 2
        if key.endswith("budget_usd"):  # as set: $0.0005 is not "$0.00"
            places = max(2, -value.normalize().as_tuple().exponent)
        return _usd(value, places) if key.endswith("usd") or "usd_per" in key else str(value)
    if isinstance(value, float):
        return f"{value:.1%}" if key in ("share", "token_share", "coverage", "busy_share") else f"{value:,.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


# Titles people read in tables and Markdown; --json and --csv keep the machine names (the SQL's).
COLUMN_TITLES = {
    "day": "day (UTC)",
    "tier": "tier",
    "tiers": "tiers",
    "model": "model",
    "endpoint": "endpoint",
    "key_id": "key id",
    "key_name": "key",
    "requests": "requests",
    "spend_usd": "spend",
    "statement_usd": "statement",
    "prompt_tokens": "prompt tokens",
    "completion_tokens": "output tokens",
    "usd_per_mtok_output": "$/M output tokens",
    "usd_per_mtok_total": "$/M tokens",
    "coverage": "billing coverage",
    "token_share": "share of tokens",
    "provider": "account",
    "resource_type": "resource",
    "resource_id": "id",
    "name": "name",
    "usd_per_hour": "$/h now",
    "last_sampled_at": "last sampled",
    "in_fleet": "in the fleet",
    "resources": "resources",
    "share": "share of fleet spend",
    "vms": "GPU VMs",
    "paid_gpu_hours": "paid GPU hours",
    "busy_hours": "busy hours",
    "busy_share": "busy share",
    "daily_budget_usd": "daily budget",
    "monthly_budget_usd": "monthly budget",
    "reservations_released_usd": "reservations released",
    **{f"refused_{limit}": f"refused: {limit.replace('_', ' ')}" for limit in (
        "rpm", "tpm", "concurrency", "budget", "price_unknown", "expired", "model_not_allowed")},
}


# `--by key` in a terminal: the statement first; budgets, releases and refusals beside it, the token
# detail dropped first when narrow; the refusals by limit in one cell ("rpm 3, budget 1").
_BY_KEY_COLUMNS = [
    ("key_name", Column("key", key=True)), ("key_id", Column("key id", drop_rank=1)),
    ("requests", Column("requests", justify="right", drop_rank=5)),
    ("prompt_tokens", Column("prompt tokens", justify="right", drop_rank=2)),
    ("completion_tokens", Column("output tokens", justify="right", drop_rank=3)),
    ("token_share", Column("share of tokens", justify="right", drop_rank=4)),
    ("statement_usd", Column("statement", key=True, justify="right")),
    ("daily_budget_usd", Column("daily budget", justify="right", drop_rank=7)),
    ("monthly_budget_usd", Column("monthly budget", justify="right", drop_rank=6)),
    ("reservations_released_usd", Column("reservations released", justify="right", drop_rank=8)),
]


def refused_cell(row: dict[str, Any]) -> str:
    """A key's refusals by limit in one cell: "rpm 3, budget 1" (blank when none)."""
    from spotinference.gateway.key_refusals import REFUSALS
    counts = [(limit.replace("_", " "), row.get(f"refused_{limit}") or 0) for limit in REFUSALS]
    return ", ".join(f"{name} {n:,}" for name, n in counts if n)


def _by_key_table(r: CostReport, width: int):  # noqa: ANN202 - a rich Table
    columns = [spec for _, spec in _BY_KEY_COLUMNS] + [Column("refused (by limit)", drop_rank=9)]
    rows = [[(row["key_name"] or row["key_id"] or "(no tokens)") if name == "key_name" else _cell(name, row[name])
             for name, _ in _BY_KEY_COLUMNS] + [refused_cell(row)] for row in r.breakdown]
    return build_table("by key", columns, rows, width=width)


def column_title(key: str) -> str:
    """A breakdown column's title for people; a column a query adds later still reads as words."""
    if key in COLUMN_TITLES:
        return COLUMN_TITLES[key]
    words = key.removesuffix("_usd").replace("usd_per_mtok_", "$/M ").replace("_", " ")
    return words + (" ($)" if key.endswith("_usd") else "")


def _empty_breakdown(r: CostReport) -> str:
    what = {"key": "no requests and no spend to put on a key", "model": "no requests and no spend to put on a model",
            "endpoint": "no requests and no spend to put on an endpoint",
            "utilisation": "no GPU VM billed"}.get(r.by or "", "nothing billed or served")
    return (f"by {r.by}: no rows: {what} in this window; widen it (--days, --since) or check that "
            "`spot sample` runs (spot cron)")


def _warnings(r: CostReport) -> list[str]:
    out = []
    blind = [a for a in r.accounts if not a.observable]
    if not r.observable:
        who = ", ".join(a.provider for a in blind) or "any account"
        out.append(f"UNOBSERVABLE: no good billing sample in this window from {who}, so its spend is unknown "
                   "(not $0). Is `spot sample` running (cron)?")
    elif r.gaps:
        missing = r.window_minutes - r.covered_minutes
        out.append(f"COVERAGE GAPS: billing was observed in {r.coverage:.2%} of the window's minutes up to the last "
                   f"sample ({missing:,} minute(s) missing from the least-covered account, {len(r.gaps)} gap(s)); "
                   "spend accrued in a gap is counted at the account's first good sample after it.")
    lag = r.billing_lag_s
    if r.observable and lag is not None and lag > r.fresh_within_s:
        out.append(f"BILLING BEHIND: the last billing sample is {lag:,.0f} s before the window's end; what was served "
                   "since is not billed yet (not $0) and not in the figures.")
    if r.anomalies:
        out.append(f"ANOMALIES: {len(r.anomalies)} billing sample(s) were not counted (a total below its high-water "
                   "mark, or none at all); see --json or `spot doctor`.")
    return out


def _billed(r: CostReport) -> str:
    if r.billed_from is None or r.billed_until is None:
        return "nothing (no good billing sample in the window)"
    return f"{r.billed_from.isoformat()} → {r.billed_until.isoformat()} (snapped to billing samples)"


def _unbilled(r: CostReport) -> str:
    u = r.not_billed_yet
    if u is None:
        return "nothing"
    return f"{u.completion_tokens:,} completion tokens in {u.requests:,} request(s) since {u.start.isoformat()}"


def _headline(r: CostReport) -> list[tuple[str, str]]:
    accounts = "; ".join(f"{a.provider} {a.coverage:.2%}" + ("" if a.observable else " UNOBSERVABLE")
                         for a in r.accounts) or "no account"
    return [
        ("window", f"{r.window.start.isoformat()} → {r.window.end.isoformat()} (UTC)"),
        ("billed", _billed(r)),
        ("cost per million output tokens", _rate(r.usd_per_mtok_output, r.observable)),
        ("cost per million tokens (prompt + completion)",
         _rate(r.usd_per_mtok_total, r.observable).replace(" output", "")),
        ("spend (fleet)", _usd(r.spend_usd)),
        ("outside the fleet (same accounts, not in the figures)", _usd(r.outside_fleet_usd)),
        ("tokens", f"{r.prompt_tokens:,} prompt + {r.completion_tokens:,} completion"),
        ("not billed yet", _unbilled(r)),
        ("billing coverage", f"{r.coverage:.2%} of {r.window_minutes:,} minutes ({accounts})"),
        ("complete", "yes" if r.complete else "no"),
    ]


def _hosted_rows(r: CostReport) -> list[list[str]]:
    rows = []
    for c in r.comparisons:
        ratio = "" if c.spend_ratio is None else f"{c.spend_ratio:.2f}×"
        rows.append([f"{c.provider} {c.model}", _usd(c.usd_per_mtok_input), _usd(c.usd_per_mtok_output),
                     _usd(c.hosted_usd), ratio])
    return rows


_HOSTED_COLS = ["hosted API (list price)", "$/M input", "$/M output", "same tokens there", "our spend ÷ theirs"]


def _table(r: CostReport) -> None:
    from rich.table import Table

    from ..output import console

    con = console()
    for line in _warnings(r):
        con.print(f"[bold red]{line}[/bold red]")
    head = Table(title="spot cost: invoice-true", title_justify="left", show_header=False)
    head.add_column()
    head.add_column()
    for name, value in _headline(r):
        head.add_row(name, value)
    con.print(head)
    for g in r.gaps[:10]:
        con.print(f"  gap {g.provider}: {g.start.isoformat()} → {g.end.isoformat()} ({g.minutes} min)")
    if len(r.gaps) > 10:
        con.print(f"  … and {len(r.gaps) - 10} more gap(s) (see --json)")
    if r.by == "key" and r.breakdown:
        con.print(_by_key_table(r, con.width))
    elif r.by is not None:
        table = Table(title=f"by {r.by}", title_justify="left")
        cols = list(r.breakdown[0]) if r.breakdown else []
        for col in cols:
            table.add_column(column_title(col))
        for row in r.breakdown:
            table.add_row(*(_cell(k, v) for k, v in row.items()))
        con.print(table if cols else _empty_breakdown(r))
    if r.hosted is not None:
        hosted = Table(title=f"hosted APIs: {r.hosted.note}", title_justify="left")
        for col in _HOSTED_COLS:
            hosted.add_column(col)
        for row in _hosted_rows(r):
            hosted.add_row(*row)
        con.print(hosted)
    con.print(r.scope)


def _csv(r: CostReport) -> None:
    out = csv.writer(sys.stdout)
    if r.by is not None:
        cols = list(r.breakdown[0]) if r.breakdown else []
        out.writerow(cols)
        for row in r.breakdown:
            out.writerow(["" if v is None else (v.isoformat() if hasattr(v, "isoformat") else v) for v in row.values()])
        return
    data = r.to_dict()
    data["gaps"] = len(r.gaps)
    data["anomalies"] = len(r.anomalies)
    data["not_billed_yet_completion_tokens"] = r.not_billed_yet.completion_tokens if r.not_billed_yet else 0
    keys = ["window_start", "window_end", "billed_from", "billed_until", "observable", "complete", "spend_usd",
            "outside_fleet_usd", "prompt_tokens", "completion_tokens", "usd_per_mtok_output", "usd_per_mtok_total",
            "coverage", "gaps", "anomalies", "not_billed_yet_completion_tokens"]
    out.writerow(keys)
    out.writerow(["" if data[k] is None else (data[k].isoformat() if hasattr(data[k], "isoformat") else data[k]) for k in keys])


def _md_table(cols: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _markdown(r: CostReport) -> str:
    parts = [f"# Serving economics, {r.window.start:%Y-%m-%d %H:%M} to {r.window.end:%Y-%m-%d %H:%M} UTC\n"]
    parts += [f"> **{line}**\n" for line in _warnings(r)]
    parts.append(_md_table(["figure", "value"], [[k, v] for k, v in _headline(r)]))
    parts.append(
        "\n**Method.** Spend is read from the provider's billing API once a minute: the sum of the "
        "increases of each resource's cumulative bill between consecutive samples (a lower total is an "
        "anomaly that counts nothing). Cost per million output tokens is the spend between two billing "
        "samples divided by the completion tokens the gateway finished between the same two samples; "
        "what was served after the last sample is not billed yet. No list price × time "
        f"estimate is used. {r.scope}\n"
    )
    if r.gaps:
        parts.append("\n## Billing gaps\n\n" + _md_table(
            ["account", "from", "to", "minutes"],
            [[g.provider or "", g.start.isoformat(), g.end.isoformat(), str(g.minutes)] for g in r.gaps[:50]]))
    if r.by is not None and r.breakdown:
        cols = list(r.breakdown[0])
        parts.append(f"\n## By {r.by}\n\n" + _md_table([column_title(c) for c in cols],
                                                         [[_cell(k, v) for k, v in row.items()] for row in r.breakdown]))
    elif r.by is not None:
        parts.append(f"\n## By {r.by}\n\n{_empty_breakdown(r)}\n")
    if r.hosted is not None:
        parts.append(f"\n## Hosted APIs for comparison\n\nList prices as of {r.hosted.as_of} ({r.hosted.note}); "
                     "'same tokens there' prices this window's prompt and completion tokens at each list price.\n\n"
                     + _md_table(_HOSTED_COLS, _hosted_rows(r)))
    return "\n".join(parts)


def _focus(store: Any, r: CostReport, target: Path) -> None:
    from spotinference.costs.focus import FOCUS_VERSION, export

    for line in _warnings(r):  # on stderr: they are about the file, not in it
        typer.echo(f"spot cost --focus: {line}", err=True)
    done = export(store, r, target)
    if done.missing_hours:
        typer.echo(f"spot cost --focus: {done.missing_hours} hour(s) touched a billing gap: an hour without a good "
                   "sample has no row (not $0); what accrued in a gap is on the hour of the next good sample",
                   err=True)
    typer.echo(f"wrote {done.path}: {done.rows:,} FOCUS {FOCUS_VERSION} row(s) ({done.file_format.lower()}), "
               f"BilledCost {_usd(done.billed_usd, 6)} from {_billed(r)}")


def _plot(r: CostReport, target: Path | None) -> None:
    from datetime import timedelta

    from spotinference.costs.plot import OBSERVED, daily_spend, write_chart

    if target is not None:
        typer.echo(f"wrote {write_chart(r, target)}")
        return
    for line in _warnings(r):
        typer.echo(line)
    days = daily_spend(r)
    top_s = max((d.spend_usd for d in days if d.spend_usd is not None), default=Decimal(0))
    top_r = max((d.usd_per_mtok_output for d in days if d.usd_per_mtok_output is not None), default=Decimal(0))
    width = 40
    typer.echo(f"{'UTC day':<22} {'spend':>14}  {'':<{width}}  {'$/M output':>12}")
    for d in days:
        s, rate = d.spend_usd, d.usd_per_mtok_output
        bar = "" if s is None or not top_s else "█" * round(width * float(s / top_s))
        rbar = "" if rate is None or not top_r else "▒" * round(20 * float(rate / top_r))
        # A day without an observed bill says so in words: never a $0 or an empty bar alone.
        spend = _usd(s) if d.status == OBSERVED and s is not None else d.status
        # A part of a day (the window's ends, the last sample) shows the hours it covers.
        until = d.billed_until or d.end
        hours = "" if (d.start.time(), until - d.start) == (datetime.min.time(), timedelta(days=1)) else (
            f" {d.start:%H:%M}-{'24:00' if until.date() > d.day else format(until, '%H:%M')}")
        typer.echo(f"{d.day.isoformat() + hours:<22} {spend:>14}  {bar:<{width}}  "
                   f"{_usd(rate) if rate is not None else '-':>12} {rbar}")
    typer.echo(r.scope)
