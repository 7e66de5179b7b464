"""`spot serve`, `spot keys`, `spot requests`: the gateway and what it records."""

from __future__ import annotations

from typing import Annotated

import typer

from ..output import print_json, print_table
from ..state import CliState
from .options import JsonOption

keys_app = typer.Typer(help="Client API keys: create (shown once), list, revoke.", no_args_is_help=True)


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


@keys_app.command("create")
def keys_create(ctx: typer.Context, name: str, json: JsonOption = False) -> None:
    """Create a key and print it once: it cannot be shown again."""
    from spotinference.keys import create_key

    state: CliState = ctx.obj
    new = create_key(state.store(), name)
    if json:
        print_json({"name": new.name, "key": new.key, "key_id": new.key_id})
    else:
        typer.echo(new.key)
        typer.echo(f"key {new.name!r} created; store it now, it is not shown again", err=True)


@keys_app.command("list")
def keys_list(ctx: typer.Context, json: JsonOption = False) -> None:
    """List keys: names, creation, last use, revocation. Never the keys themselves."""
    from spotinference.keys import list_keys

    state: CliState = ctx.obj
    keys = list_keys(state.store())
    rows = [
        {"name": k.name, "key_id": k.key_id, "prefix": k.key_prefix + "…", "created_at": k.created_at,
         "last_used_at": k.last_used_at, "revoked_at": k.revoked_at}
        for k in keys
    ]
    if json:
        print_json(rows)
        return
    print_table(
        None, ["name", "prefix", "created", "last used", "state"],
        [(r["name"], r["prefix"], _when(r["created_at"]), _when(r["last_used_at"]) or "never",
          "revoked " + _when(r["revoked_at"]) if r["revoked_at"] else "active") for r in rows],
    )


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


def requests(
    ctx: typer.Context,
    last: Annotated[int, typer.Option("--last", min=1, help="How many of the newest requests.")] = 20,
    reconcile: Annotated[str | None, typer.Option(
        "--reconcile", metavar="ENGINE_URL",
        help="Also compare the log with this vLLM engine's own token counters since it started.")] = None,
    json: JsonOption = False,
) -> None:
    """List the newest usage rows from the token log."""
    from spotinference.reports import run_query

    state: CliState = ctx.obj
    rows = run_query(state.store(), "requests_recent", last=last).records()
    lines = _reconciliation(state, reconcile) if reconcile else None
    if json:
        print_json(rows if lines is None else {"requests": rows, "reconciliation": lines})
        return
    print_table(
        None, ["started", "model", "key", "status", "ttft ms", "prompt", "completion", "finish", "aborted"],
        [(_when(r["started_at"]), r["model"], r["key_name"], r["status"], r["ttft_ms"], _tokens(r["prompt_tokens"]),
          _tokens(r["completion_tokens"]), r["finish_reason"], "yes" if r["aborted"] else "") for r in rows],
    )
    for line in lines or []:
        typer.echo(f"{line['model']} against {reconcile}: {line['line']}")


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
