"""Running the gateway under uvicorn, with one or more worker processes.

Workers are separate processes, so each builds its own app from a spec passed in the
environment (uvicorn's factory mode): its own upstream clients, spool writer and flusher.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..config import Settings, load_settings
from ..store import Store
from .app import GatewayApp, create_app, options_from_settings
from .operator import operator_token, token_path
from .routing import build_router

SPEC_ENV = "SPOT_GATEWAY_SPEC"

# How uvicorn runs the relay (the benchmark's ASGI floor, tests/benchmarks/asgi_relay.py, uses the
# same, so that only the app differs between the two). The protocol is uvicorn's httptools one
# with bounds on what a client can make it hold before any auth (http_limits.py).
UVICORN_HOT_PATH: dict[str, object] = {
    "loop": "uvloop",
    "http": "spotinference.gateway.http_limits:LimitedHttpToolsProtocol",
    "access_log": False,  # the usage log is the access log; per-request logging costs latency
    # Nothing reads the client's address, so uvicorn's X-Forwarded-For middleware would only add
    # a layer to every request (6% of the gateway's samples at 64 streams, inclusive).
    "proxy_headers": False,
    "log_level": "warning",
}


@dataclass
class GatewaySpec:
    config_path: str | None
    host: str
    port: int
    workers: int
    static_upstreams: dict[str, list[str]] = field(default_factory=dict)


def startup_notes(settings: Settings, spec: GatewaySpec) -> list[str]:
    """What the operator must know before the first request (the CLI prints these)."""
    notes = []
    if not settings.gateway.require_keys:
        notes.append(
            "WARNING: API keys are OFF (gateway.require_keys = false): anyone who can reach "
            f"{spec.host}:{spec.port} can use the engines. Use this for local experiments only."
        )
    if spec.static_upstreams:
        notes.append(
            "static upstreams only: no provider behind them, so nothing to sample and no budget gate"
        )
    if not spec.static_upstreams and settings.tiers:
        budget = settings.budget
        if budget.daily_usd is None:
            notes.append("no daily budget (budget.daily_usd): the budget gate is open whatever the spend")
        else:
            notes.append(
                f"budget gate: ${budget.daily_usd} a day ({budget.timezone}); closed when billing samples are older "
                f"than {budget.max_sample_age_s} s (run `spot sample` from cron: see `spot cron`)"
            )
        notes.append(
            "fleet tiers: " + ", ".join(sorted(settings.tiers))
            + " (a request for a sleeping tier is held while the tier wakes; idle tiers hibernate)"
        )
    gateway = settings.gateway
    needed = open_files_needed(gateway.max_connections)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < needed:
        notes.append(f"WARNING: gateway.max_connections = {gateway.max_connections} needs ~{needed} open files, but "
                     f"this process may open only {hard} (ulimit -Hn): past that, new connections fail before "
                     "the gateway can answer 503. Raise the limit (systemd: LimitNOFILE) or lower max_connections.")
    if gateway.operator_port is not None:
        notes.append(f"operator endpoints (/metrics, /health detail) without a token on "
                     f"{gateway.operator_host}:{gateway.operator_port}")
    if gateway.operator_token is None:
        notes.append(f"operator token for /metrics and /health detail: in {token_path(settings)} (never printed)")
    return notes


def build_app(spec: GatewaySpec) -> GatewayApp:
    settings, _ = load_settings(Path(spec.config_path) if spec.config_path else None)
    store = Store(settings.home)
    store.migrate()
    router = build_router(settings, spec.static_upstreams)
    runtime = gate = None
    if not spec.static_upstreams and settings.tiers:
        from ..billing.budget import BudgetGate
        from .fleet_runtime import FleetRuntime

        runtime = FleetRuntime(settings, store, router)
        gate = BudgetGate(store, settings)
    return create_app(store, router, options_from_settings(settings), runtime, gate)


def app_from_environment() -> GatewayApp:
    """uvicorn's factory entry point in each worker."""
    app = build_app(GatewaySpec(**json.loads(os.environ[SPEC_ENV])))
    # Everything loaded so far (Litestar, pydantic, DuckDB, the config: ~70,000 objects) lives as
    # long as the process. Frozen out of the collector, a full collection walks only what requests
    # allocated (~9,000 objects at 64 streams) instead of stalling every stream for ~20-40 ms.
    gc.collect()
    gc.freeze()
    return app


def serve(spec: GatewaySpec) -> None:
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    os.environ[SPEC_ENV] = json.dumps(asdict(spec))
    settings, _ = load_settings(Path(spec.config_path) if spec.config_path else None)
    gateway = settings.gateway
    operator_token(settings, create=True)  # before any worker starts, so that all read one token
    raise_open_files_limit(open_files_needed(gateway.max_connections))  # workers inherit it
    config = uvicorn.Config(
        "spotinference.gateway.server:app_from_environment",
        factory=True,
        host=spec.host,
        port=spec.port,
        workers=spec.workers if spec.workers > 1 else None,
        timeout_graceful_shutdown=30,
        timeout_keep_alive=gateway.client_keepalive_timeout_s,
        **UVICORN_HOT_PATH,  # type: ignore[arg-type]
    )
    server = uvicorn.Server(config)
    sockets = [config.bind_socket()]
    if gateway.operator_port is not None:
        if gateway.operator_port == spec.port:
            raise SystemExit(f"gateway.operator_port ({gateway.operator_port}) must differ from the API port")
        sockets.append(_bind(gateway.operator_host, gateway.operator_port))
    try:
        if config.workers > 1:
            Multiprocess(config, sockets=sockets).run()
        else:
            server.run(sockets=sockets)
    except KeyboardInterrupt:
        pass
    if config.workers == 1 and not server.started:
        raise SystemExit(3)  # uvicorn's STARTUP_FAILURE: the app could not start


def open_files_needed(max_connections: int) -> int:
    """File descriptors for max_connections clients, an engine connection each, and the rest
    (listeners, the spool, DuckDB, the flush process's pipes)."""
    return 2 * max_connections + 256


def raise_open_files_limit(needed: int) -> None:
    """Raise the soft RLIMIT_NOFILE towards ``needed`` (within the hard limit): a soft limit of
    1024, common under systemd and shells, would otherwise fail accept() below max_connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket for the operator listener, bound the way uvicorn binds its own."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock
