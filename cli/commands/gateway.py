"""`spot serve`, `spot keys`, `spot requests`: the gateway and what it records."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from ..output import Column, print_json, print_table
from ..state import CliState
from .options import JsonOption

if TYPE_CHECKING:
    from collections.abc import Iterator
    from decimal import Decimal

    from spotinference.key_settings import KeySettings
    from spotinference.keys import KeyInfo

    from spotinference.request_log import RequestFilter

keys_app = typer.Typer(help="Client API keys: create (shown once), update their settings, list, revoke.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.add_typer(keys_app, name="keys")
    app.command("requests")(requests)


def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option("--host", help="Bind address (default: gateway.host).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port (default: gateway.port).")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Worker processes (default: gateway.workers).")] = None,
    upstream: Annotated[
        list[str] | None,
        typer.Option("--upstream", help="Serve MODEL from an engine at URL, without fleet config (repeatable).", metavar="MODEL=URL"),
    ] = None,
    with_sampler: Annotated[
        bool, typer.Option("--with-sampler", help="Also run `spot sample --every 60` beside the gateway (cron stays the production setup).")
    ] = False,
    log_level: Annotated[str | None, typer.Option(
        "--log-level", metavar="debug|info|warning|error",
        help="Log decisions (wake, hibernate, failover, gate) and one access line per request (info) on stderr; "
             "warning: decisions that went wrong only (default: gateway.log_level, info).")] = None,
    log_format: Annotated[str | None, typer.Option(
        "--log-format", metavar="text|json", help="text, or one JSON object per line (default: gateway.log_format, text).")] = None,
) -> None:
    """Run the OpenAI-compatible gateway in front of the fleet's engines."""
    from spotinference.gateway.routing import parse_upstream_flags
    from spotinference.gateway.server import GatewaySpec, startup_notes
    from spotinference.gateway.server import serve as run_gateway

    state: CliState = ctx.obj
    settings = state.settings
    spec = GatewaySpec(
        config_path=str(state.config_path) if state.config_path else None,
        host=host or settings.gateway.host,
        port=port or settings.gateway.port,
        workers=workers or settings.gateway.workers,
        static_upstreams=parse_upstream_flags(upstream or []),
        with_sampler=with_sampler,
        log_level=(log_level or settings.gateway.log_level).lower(),
        log_format=(log_format or settings.gateway.log_format).lower(),
    )

    def notes() -> None:  # once the port is ours: a taken port is one line, nothing before it
        for note in startup_notes(settings, spec):
            typer.echo(note, err=True)

    where = f"http://{spec.host}:{spec.port}/v1 ({spec.workers} worker(s))"
    run_gateway(spec, on_bound=notes, on_listening=lambda: typer.echo(f"spot gateway on {where}", err=True))


_SETTING = "Per-key settings (also on `spot keys update`)"
DailyUsd = Annotated[str | None, typer.Option("--daily-usd", metavar="USD", rich_help_panel=_SETTING,
    help="Budget per day in dollars, invoice-true: past it, 429 key_budget_exhausted until midnight (budget.timezone).")]
MonthlyUsd = Annotated[str | None, typer.Option("--monthly-usd", metavar="USD", rich_help_panel=_SETTING,
    help="Budget per calendar month in dollars, invoice-true: past it, 429 key_budget_exhausted until the next month.")]
Rpm = Annotated[str | None, typer.Option("--rpm", metavar="N", rich_help_panel=_SETTING,
    help="Requests per minute, across every worker: past it, 429 rate_limit_exceeded with Retry-After.")]
Tpm = Annotated[str | None, typer.Option("--tpm", metavar="N", rich_help_panel=_SETTING,
    help="Prompt + completion tokens per minute (the engine's usage, taken as each request ends).")]
MaxConcurrent = Annotated[str | None, typer.Option("--max-concurrent", metavar="N", rich_help_panel=_SETTING,
    help="Requests in flight at once, across every worker.")]
Models = Annotated[str | None, typer.Option("--models", metavar="A,B", rich_help_panel=_SETTING,
    help="The only models this key may use; others answer 404 as if they did not exist.")]
Expires = Annotated[str | None, typer.Option("--expires", metavar="DATE", rich_help_panel=_SETTING,
    help="YYYY-MM-DD: the key works through that day (UTC), then answers 401 key_expired; "
         "or a time YYYY-MM-DDTHH:MM[+HH:MM].")]


@keys_app.command("create")
def keys_create(ctx: typer.Context, name: str, daily_usd: DailyUsd = None, monthly_usd: MonthlyUsd = None,
                rpm: Rpm = None, tpm: Tpm = None, max_concurrent: MaxConcurrent = None, models: Models = None,
                expires: Expires = None, json: JsonOption = False) -> None:
    """Create a key and print it once: it cannot be shown again."""
    from spotinference.key_settings import KeySettings, parse_settings
    from spotinference.keys import create_key

    state: CliState = ctx.obj
    given = {"daily_usd": daily_usd, "monthly_usd": monthly_usd, "rpm": rpm, "tpm": tpm,
             "max_concurrent": max_concurrent, "models": models, "expires_at": expires}
    settings = KeySettings(**parse_settings(given))
    new = create_key(state.store(), name, settings)
    if json:
        print_json({"name": new.name, "key": new.key, "key_id": new.key_id, "settings": _settings_json(settings)})
    else:
        typer.echo(new.key)
        typer.echo(f"key {new.name!r} created; store it now, it is not shown again", err=True)


@keys_app.command("update")
def keys_update(
    ctx: typer.Context, name: str, daily_usd: DailyUsd = None, monthly_usd: MonthlyUsd = None, rpm: Rpm = None,
    tpm: Tpm = None, max_concurrent: MaxConcurrent = None, models: Models = None, expires: Expires = None,
    clear: Annotated[list[str] | None, typer.Option(
        "--clear", metavar="SETTING[,SETTING]", rich_help_panel=_SETTING,
        help="Remove settings: daily-usd, monthly-usd, rpm, tpm, max-concurrent, models (every model again), "
             "expires (never).")] = None,
    json: JsonOption = False,
) -> None:
    """Change a key's settings; a running gateway applies them within a second. A past --expires ends the key now."""
    from spotinference.key_settings import parse_clear, parse_settings
    from spotinference.keys import update_key

    state: CliState = ctx.obj
    given = {"daily_usd": daily_usd, "monthly_usd": monthly_usd, "rpm": rpm, "tpm": tpm,
             "max_concurrent": max_concurrent, "models": models, "expires_at": expires}
    info = update_key(state.store(), name, parse_settings(given, allow_past_expiry=True), parse_clear(clear or []))
    if json:
        print_json({"name": info.name, "settings": _settings_json(info.settings)})
    else:
        typer.echo(f"key {info.name!r} updated: {_limits(info.settings) or 'no settings'}")


def _settings_json(settings: KeySettings) -> dict:
    from spotinference.jsonable import jsonable

    return jsonable(settings.to_dict())


def _usd(value: Decimal) -> str:
    exact = value.normalize()
    return f"${value:,.2f}" if exact.as_tuple().exponent >= -2 else f"${exact:,f}"  # type: ignore[operator]


def _limits(settings: KeySettings) -> str:
    """A key's settings in a few words: $5.00/day · 60 rpm · 4 at once · models a, b · until …"""
    parts = []
    if settings.daily_usd is not None:
        parts.append(f"{_usd(settings.daily_usd)}/day")
    if settings.monthly_usd is not None:
        parts.append(f"{_usd(settings.monthly_usd)}/month")
    for value, unit in ((settings.rpm, "rpm"), (settings.tpm, "tpm"), (settings.max_concurrent, "at once")):
        if value is not None:
            parts.append(f"{value:,} {unit}")
    if settings.models is not None:
        parts.append("models " + ", ".join(settings.models))
    if settings.expires_at is not None:
        parts.append("expires " + _when(settings.expires_at))
    return " · ".join(parts)


@keys_app.command("list")
def keys_list(ctx: typer.Context, json: JsonOption = False) -> None:
    """List keys: names, settings, tokens today and this month, last use, state. Never the keys themselves."""
    from spotinference.keys import list_keys

    state: CliState = ctx.obj
    keys = list_keys(state.store(), timezone=state.settings.budget.timezone)
    rows = [
        {"name": k.name, "key_id": k.key_id, "prefix": k.key_prefix + "…", "created_at": k.created_at,
         "last_used_at": k.last_used_at, "revoked_at": k.revoked_at, "expired": k.settings.expired(),
         "settings": _settings_json(k.settings), "tokens_today": k.tokens_today,
         "tokens_this_month": k.tokens_this_month, "spend_today_usd": k.spend_today_usd,
         "spend_this_month_usd": k.spend_this_month_usd}
        for k in keys
    ]
    if json:
        print_json(rows)
        return
    if not rows:
        typer.echo("no keys yet: spot keys create NAME")
        return
    # Narrow terminals drop the prefix, then the creation time, before anything else.
    print_table(
        None, [Column("name", key=True), Column("state", key=True), Column("settings", drop_rank=5),
               Column("spend", drop_rank=6),
               Column("tokens today", justify="right", drop_rank=4),
               Column("tokens this month", justify="right", drop_rank=3),
               Column("last used (UTC)", drop_rank=2), Column("created (UTC)", drop_rank=1),
               Column("prefix", drop_rank=0)],
        [(k.name, _key_state(k), _limits(k.settings), _spend(k), f"{k.tokens_today:,}", f"{k.tokens_this_month:,}",
          _when(k.last_used_at) or "never", _when(k.created_at), k.key_prefix + "…") for k in keys],
    )


def _spend(key: KeyInfo) -> str:
    """The key's statement against each budget it has: $1.20 of $5.00 today · $30.00 of $100.00 this month."""
    parts = []
    if key.settings.daily_usd is not None:
        parts.append(f"{_usd(key.spend_today_usd)} of {_usd(key.settings.daily_usd)} today")
    if key.settings.monthly_usd is not None:
        parts.append(f"{_usd(key.spend_this_month_usd)} of {_usd(key.settings.monthly_usd)} this month")
    return " · ".join(parts) or f"{_usd(key.spend_today_usd)} today"


def _key_state(key: KeyInfo) -> str:
    if key.revoked_at:
        return "revoked " + _when(key.revoked_at)
    if key.settings.expired():
        return "expired " + _when(key.settings.expires_at)
    return "active"


@keys_app.command("revoke")
def keys_revoke(ctx: typer.Context, name: str, json: JsonOption = False) -> None:
    """Revoke a key; a running gateway refuses it within a second."""
    from spotinference.keys import revoke_key

    state: CliState = ctx.obj
    info = revoke_key(state.store(), name)
    if json:
        print_json({"name": info.name, "revoked_at": info.revoked_at})
    else:
        typer.echo(f"key {info.name!r} revoked")


REQUEST_COLUMNS = ["started (UTC)", "model", "key", "status", "TTFT ms", "prompt tokens", "output tokens",
                   "finish", "aborted"]
# What must never be cut at 80 columns; the other titles may wrap onto a second line.
_WHOLE = {"started (UTC)", "model", "key", "status"}
# --follow prints a line per request as it comes, so its columns are fixed: 80 wide at most.
FOLLOW_COLUMNS = [("started (UTC)", 14), ("model", 12), ("key", 8), ("status", 6), ("TTFT ms", 7), ("prompt", 6),
                  ("output", 6), ("finish", 7)]


def requests(
    ctx: typer.Context,
    last: Annotated[int, typer.Option("--last", min=1, help="How many of the newest requests.")] = 20,
    key: Annotated[str | None, typer.Option("--key", metavar="NAME", help="Only this client key's requests.")] = None,
    model: Annotated[str | None, typer.Option("--model", metavar="MODEL", help="Only requests for this model.")] = None,
    status: Annotated[str | None, typer.Option(
        "--status", metavar="CODE", help="Only this HTTP status (200) or class (4xx, 5xx).",
        autocompletion=lambda incomplete: [c for c in ("2xx", "4xx", "5xx") if c.startswith(incomplete)])] = None,
    since: Annotated[str | None, typer.Option(
        "--since", metavar="WHEN", help="Only requests started since then: 10m, 2h, 7d, or a UTC date/time.")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new requests as they finish, until Ctrl-C.")] = False,
    reconcile: Annotated[str | None, typer.Option(
        "--reconcile", metavar="ENGINE_URL",
        help="Also compare the log with this vLLM engine's own token counters since it started.")] = None,
    json: JsonOption = False,
) -> None:
    """List the newest requests from the token log, filtered by key, model, status and time."""
    from spotinference.errors import InputError
    from spotinference.request_log import RequestFilter, follow_requests, newest_requests

    from ..when import parse_since

    if follow and reconcile:
        raise InputError("--follow and --reconcile do not go together: reconcile once, without --follow")
    state: CliState = ctx.obj
    store = state.store()
    filters = RequestFilter(key_name=key, model=model, **_status_range(status),
                            since=parse_since("--since", since) if since else None)
    if key is not None:
        _known_key(store, key)
    if follow:
        _follow(follow_requests(store, filters, last), json=json)
        return
    rows = newest_requests(store, filters, last)
    lines = _reconciliation(state, reconcile) if reconcile else None
    if json:
        print_json(rows if lines is None else {"requests": rows, "reconciliation": lines})
        return
    if rows:
        _requests_table(rows)
    else:
        typer.echo(_no_requests_hint(filters))
    for line in lines or []:
        typer.echo(f"{line['model']} against {reconcile}: {line['line']}")


def _status_range(text: str | None) -> dict[str, int | None]:
    from spotinference.errors import InputError

    if text is None:
        return {"status_min": None, "status_max": None}
    code = text.strip().lower()
    if len(code) == 3 and code[0] in "12345" and code[1:] == "xx":
        return {"status_min": int(code[0]) * 100, "status_max": int(code[0]) * 100 + 99}
    if code.isdigit() and 100 <= int(code) <= 599:
        return {"status_min": int(code), "status_max": int(code)}
    raise InputError(f"--status {text!r} is not an HTTP status: expected a code (200, 429) or a class (2xx, 4xx, 5xx)")


def _known_key(store: object, name: str) -> None:
    from spotinference.errors import InputError
    from spotinference.keys import list_keys

    names = [k.name for k in list_keys(store)]  # type: ignore[arg-type]
    if name not in names:
        known = ", ".join(names) if names else "none yet: spot keys create NAME"
        raise InputError(f"--key {name!r} names no key (known: {known})")


def _no_requests_hint(filters: RequestFilter) -> str:
    if filters.narrows:
        return "no requests match these filters: drop one, or widen --since"
    return ("no requests logged yet: start the gateway (spot serve), create a key (spot keys create NAME) and point "
            "an OpenAI client at it")


def _request_cells(r: dict) -> list:
    ttft = None if r["ttft_ms"] is None else f"{r['ttft_ms']:,.0f}"
    return [_when(r["started_at"]), _model_and_endpoint(r), r["key_name"] or "", r["status"], ttft,
            _tokens(r["prompt_tokens"]), _tokens(r["completion_tokens"]), r["finish_reason"],
            "yes" if r["aborted"] else ""]


def _model_and_endpoint(r: dict) -> str:
    # 80 columns have no room for an endpoint column: a request on another route than chat
    # shows it on a second line under its model (the table's caption says so).
    label = _endpoint(r.get("endpoint"))
    return r["model"] if label in ("", "chat") else f"{r['model']}\n{label}"


def _endpoint(route: str | None) -> str:
    # Short for 80 columns: "chat", "completions", "responses", "messages", "/tokenize" (--json
    # has the route itself). Rows logged before the gateway recorded the route show nothing.
    if route is None:
        return ""
    short = route.removeprefix("/v1/")
    return _SHORT_ENDPOINTS.get(short, short)


_SHORT_ENDPOINTS = {"chat/completions": "chat", "audio/transcriptions": "transcribe", "audio/translations": "translate",
                    "messages/count_tokens": "count_tokens"}


def _requests_table(rows: list[dict]) -> None:
    """A table that fits 80 columns: columns empty in every row are left out, the first four never cut."""
    from rich import box
    from rich.table import Table

    from ..output import console

    cells = [["" if c is None else str(c) for c in _request_cells(r)] for r in rows]
    keep = [i for i, title in enumerate(REQUEST_COLUMNS) if any(row[i] for row in cells)]
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for i in keep:
        title = REQUEST_COLUMNS[i]
        table.add_column(title, no_wrap=title in _WHOLE, justify="right" if i in (3, 4, 5, 6) else "left")
    for row in cells:
        table.add_row(*(row[i] for i in keep))
    if any("\n" in row[1] for row in cells):
        table.caption = "under a model: the endpoint of a request not on chat/completions"
    console().print(table)


def _follow(rows: Iterator[dict], *, json: bool) -> None:
    """Print each row as the log yields it, one line each, until Ctrl-C (exit 0)."""
    import json as jsonlib
    import sys

    from spotinference.jsonable import jsonable

    def line(cells: list) -> str:
        return "  ".join(f"{'' if c is None else c!s:<{w}}" for c, (_, w) in zip(cells, FOLLOW_COLUMNS, strict=True)).rstrip()

    def cells(r: dict) -> list:
        started = r["started_at"].strftime("%m-%d %H:%M:%S")
        ttft, prompt, output, finish, aborted = _request_cells(r)[4:]
        return [started, r["model"], r["key_name"], r["status"], ttft, prompt, output, "aborted" if aborted else finish]

    if not json:
        sys.stdout.write(line([title for title, _ in FOLLOW_COLUMNS]) + "\n")
        sys.stdout.flush()
    try:
        for row in rows:
            sys.stdout.write((jsonlib.dumps(jsonable(row), default=str) if json else line(cells(row))) + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        sys.stderr.write("spot requests: stopped\n")


def _reconciliation(state: CliState, engine_url: str) -> list[dict]:
    import httpx

    from spotinference.errors import InputError
    from spotinference.gateway.reconcile import reconcile_since_engine_start

    try:
        text = httpx.get(f"{engine_url.rstrip('/')}/metrics", timeout=10).text
    except httpx.HTTPError as exc:
        raise InputError(f"cannot read {engine_url}/metrics: {exc}") from None
    found = reconcile_since_engine_start(state.store(), text)
    return [{"model": model, **vars(r), "unlogged_generation_tokens": r.unlogged_generation_tokens,
             "line": r.line()} for model, r in found.items()]


def _tokens(value: object) -> object:
    # NULL: the engine did work no usage object described (e.g. a stream aborted before its first chunk).
    return "unknown" if value is None else value


def _when(value: object) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""  # type: ignore[attr-defined]
