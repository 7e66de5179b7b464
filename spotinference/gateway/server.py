"""Running the gateway under uvicorn, with one or more worker processes.

Workers are separate processes, so each builds its own app from a spec passed in the
environment (uvicorn's factory mode): its own upstream clients, spool writer and flusher, and
its own log writer (``logs.configure``): each worker writes its own lines to the same stderr.

The listening sockets are bound here, before any worker starts: a port already taken is one
``PortTakenError`` (exit 10) naming it and what holds it, and ``on_listening`` is called only
once the gateway answers on it.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import resource
import socket
import subprocess
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..child import python_module
from ..config import Settings, load_settings
from ..errors import InputError, PortTakenError, SpotError
from ..store import Store
from . import logs
from .app import GatewayApp, create_app, options_from_settings
from .metrics import share_between_workers
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
    # Run `spot sample --every SAMPLER_EVERY_S` beside the gateway (cron stays the production setup).
    with_sampler: bool = False
    log_level: str = "info"  # logs.LEVELS
    log_format: str = "text"  # logs.FORMATS


SAMPLER_EVERY_S = 60
STARTUP_FAILURE = 3  # uvicorn's exit code when the app's startup fails


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
        notes.extend(_gate_notes(settings, spec))
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


def _gate_notes(settings: Settings, spec: GatewaySpec) -> list[str]:
    budget = settings.budget
    if not budget.enforce:
        return ["WARNING: the budget gate is OFF (budget.enforce = false): the gateway serves even when "
                "spend cannot be observed and whatever the spend. Turn it back on unless you watch the bill yourself."]
    rule = (f"budget gate: closed (503 billing_unobservable) while no billing sample is newer than "
            f"{budget.max_sample_age_s} s")
    rule += (f"; ${budget.daily_usd} a day ({budget.timezone}, counting the {budget.scope}), 429 past it"
             if budget.daily_usd is not None else "; no daily budget (budget.daily_usd)")
    notes = [rule]
    if spec.with_sampler:
        notes.append(f"billing sampler: `spot sample --every {SAMPLER_EVERY_S}` runs beside the gateway "
                     "(in production, schedule it with cron: see `spot cron`)")
        return notes
    age = _last_sample_age_s(settings)
    if age is None or age > budget.max_sample_age_s:
        seen = "no good billing sample yet" if age is None else f"the last good billing sample is {age:.0f} s old"
        notes.append(f"WARNING: {seen}, so the gate stays CLOSED until `spot sample` runs: start the gateway "
                     "with `spot serve --with-sampler`, or install the cron line from `spot cron`")
    return notes


def _last_sample_age_s(settings: Settings) -> float | None:
    """Seconds since the stalest sampled account's last good run (None: some account has none)."""
    from datetime import UTC, datetime

    from ..billing.runs import last_good_runs, sampled_providers

    store = Store.from_settings(settings)
    store.migrate()
    providers = sampled_providers(settings)
    with store.reading() as con:
        runs = last_good_runs(con, providers)
    if not providers or any(p not in runs for p in providers):
        return None
    return (datetime.now(UTC) - min(r.finished_at for r in runs.values())).total_seconds()


def build_app(spec: GatewaySpec) -> GatewayApp:
    settings, _ = load_settings(Path(spec.config_path) if spec.config_path else None)
    store = Store.from_settings(settings)
    store.migrate()
    router = build_router(settings, spec.static_upstreams)
    runtime = gate = None
    if not spec.static_upstreams and settings.tiers:
        from ..billing.budget import BudgetGate
        from .fleet_runtime import FleetRuntime

        runtime = FleetRuntime(settings, store, router)
        gate = BudgetGate(store, settings, record_changes=True)  # each change is a row for `spot events`
    return create_app(store, router, options_from_settings(settings), runtime, gate)


def app_from_environment() -> GatewayApp:
    """uvicorn's factory entry point in each worker."""
    spec = GatewaySpec(**json.loads(os.environ[SPEC_ENV]))
    logs.configure(spec.log_level, spec.log_format)
    app = build_app(spec)
    # Everything loaded so far (Litestar, pydantic, DuckDB, the config: ~70,000 objects) lives as
    # long as the process. Frozen out of the collector, a full collection walks only what requests
    # allocated (~9,000 objects at 64 streams) instead of stalling every stream for ~20-40 ms.
    gc.collect()
    gc.freeze()
    return app


def serve(spec: GatewaySpec, *, on_bound: Callable[[], None] | None = None,
          on_listening: Callable[[], None] | None = None) -> None:
    """Run the gateway until stopped: ``on_bound()`` once its ports are bound (before any worker
    starts), ``on_listening()`` once it answers on its port."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    if spec.log_level not in logs.LEVELS or spec.log_format not in logs.FORMATS:
        raise InputError(f"--log-level {spec.log_level!r} / --log-format {spec.log_format!r}: expected "
                         f"one of {', '.join(logs.LEVELS)} / one of {', '.join(logs.FORMATS)}")
    os.environ[SPEC_ENV] = json.dumps(asdict(spec))
    settings, _ = load_settings(Path(spec.config_path) if spec.config_path else None)
    gateway = settings.gateway
    if gateway.operator_port is not None and gateway.operator_port == spec.port:
        raise InputError(f"gateway.operator_port ({gateway.operator_port}) must differ from the API port (--port)")
    sockets = [bind_listener(spec.host, spec.port, "--port")]
    if gateway.operator_port is not None:
        sockets.append(bind_listener(gateway.operator_host, gateway.operator_port, "gateway.operator_port"))
    if on_bound is not None:
        on_bound()
    operator_token(settings, create=True)  # before any worker starts, so that all read one token
    raise_open_files_limit(open_files_needed(gateway.max_connections))  # workers inherit it
    if spec.workers > 1:
        share_between_workers(settings.home / "gateway" / "prometheus")  # one scrape sees every worker
    config = uvicorn.Config(
        "spotinference.gateway.server:app_from_environment",
        factory=True,
        host=spec.host,
        port=spec.port,
        workers=spec.workers if spec.workers > 1 else None,
        timeout_graceful_shutdown=30,
        timeout_keep_alive=gateway.client_keepalive_timeout_s,
        **{**UVICORN_HOT_PATH, "log_level": "debug" if spec.log_level == "debug" else "warning"},  # type: ignore[arg-type]
    )
    server = uvicorn.Server(config)
    sampler = _start_sampler(spec) if spec.with_sampler else None
    stopped = threading.Event()
    if on_listening is not None:
        threading.Thread(target=_call_when_answering, args=(spec.host, spec.port, on_listening, stopped),
                         name="listening", daemon=True).start()
    try:
        if config.workers > 1:
            Multiprocess(config, sockets=sockets).run()
        else:
            server.run(sockets=sockets)
    except KeyboardInterrupt:
        return  # stopped before (or while) it started: nothing failed
    except SystemExit as exc:
        if exc.code != STARTUP_FAILURE:
            raise
        failed = True
    else:
        failed = config.workers == 1 and not server.started and not server.should_exit
    finally:
        stopped.set()
        if sampler is not None:
            _stop(sampler)
    if failed:
        # uvicorn's STARTUP_FAILURE is exit code 3, which spot keeps unused (it meant "not built
        # yet"): exit 1 instead; the app's own lines above say why it could not start.
        raise SpotError("the gateway could not start: see the lines above")


def bind_listener(host: str, port: int, option: str) -> socket.socket:
    """A listening socket bound the way uvicorn binds its own, or one line saying why not."""
    try:
        return _bind(host, port)
    except OSError as exc:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if exc.errno == errno.EADDRINUSE:
            holder = port_holder(port)
            held = f" (held by {holder})" if holder else ""
            raise PortTakenError(f"{where} is already in use{held}: stop what holds it, or choose another port "
                                 f"with {option}") from None
        if exc.errno == errno.EACCES:
            raise InputError(f"{where}: permission denied (ports below 1024 need privileges): choose another "
                             f"port with {option}") from None
        raise InputError(f"cannot listen on {where}: {exc.strerror}: check the address, or choose another "
                         f"with {option}") from None


def port_holder(port: int) -> str | None:
    """'pid N (command)' of a process of this user listening on ``port``, if /proc tells cheaply."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{parts[9]}]")
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                argv = (proc / "cmdline").read_bytes().split(b"\0")
                command = " ".join(Path(a.decode(errors="replace")).name if i == 0 else a.decode(errors="replace")
                                   for i, a in enumerate(argv) if a)
                return f"pid {proc.name}: {command[:80]}"
        except OSError:  # another user's process, or gone
            continue
    return None


def _call_when_answering(host: str, port: int, callback: Callable[[], None], stopped: threading.Event) -> None:
    """Call ``callback`` once the gateway answers /health on ``host:port`` (a worker's app is up)."""
    import httpx

    probe = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    url = f"http://[{probe}]:{port}/health" if ":" in probe else f"http://{probe}:{port}/health"
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while not stopped.wait(0.1):
            try:
                if client.get(url).status_code == 200:
                    callback()
                    return
            except httpx.HTTPError:
                continue


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


def _start_sampler(spec: GatewaySpec) -> subprocess.Popen[bytes]:
    """`spot sample --every 60` as a child of the gateway, writing to the gateway's stderr."""
    config = ["--config", spec.config_path] if spec.config_path else []
    argv = [*python_module("spotinference_cli.main"), *config, "sample", "--every", str(SAMPLER_EVERY_S)]
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL)


def _stop(sampler: subprocess.Popen[bytes]) -> None:
    sampler.terminate()
    try:
        sampler.wait(timeout=10)
    except subprocess.TimeoutExpired:
        sampler.kill()
