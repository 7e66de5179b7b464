"""Running the gateway under uvicorn, with one or more worker processes.

Workers are separate processes, so each builds its own app from a spec passed in the
environment (uvicorn's factory mode): its own upstream clients, spool writer and flusher.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..child import python_module
from ..config import Settings, load_settings
from ..store import Store
from .app import GatewayApp, create_app, options_from_settings
from .routing import build_router

SPEC_ENV = "SPOT_GATEWAY_SPEC"

# How uvicorn runs the relay (the benchmark's ASGI floor, tests/benchmarks/asgi_relay.py, uses the
# same, so that only the app differs between the two).
UVICORN_HOT_PATH: dict[str, object] = {
    "loop": "uvloop",
    "http": "httptools",
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


SAMPLER_EVERY_S = 60


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

    store = Store(settings.home)
    store.migrate()
    providers = sampled_providers(settings)
    with store.reading() as con:
        runs = last_good_runs(con, providers)
    if not providers or any(p not in runs for p in providers):
        return None
    return (datetime.now(UTC) - min(r.finished_at for r in runs.values())).total_seconds()


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

    os.environ[SPEC_ENV] = json.dumps(asdict(spec))
    sampler = _start_sampler(spec) if spec.with_sampler else None
    try:
        uvicorn.run(
            "spotinference.gateway.server:app_from_environment",
            factory=True,
            host=spec.host,
            port=spec.port,
            workers=spec.workers if spec.workers > 1 else None,
            timeout_graceful_shutdown=30,
            **UVICORN_HOT_PATH,
        )
    finally:
        if sampler is not None:
            sampler.terminate()
            try:
                sampler.wait(timeout=10)
            except subprocess.TimeoutExpired:
                sampler.kill()


def _start_sampler(spec: GatewaySpec) -> subprocess.Popen[bytes]:
    """`spot sample --every 60` as a child of the gateway, writing to the gateway's stderr."""
    config = ["--config", spec.config_path] if spec.config_path else []
    argv = [*python_module("spotinference_cli.main"), *config, "sample", "--every", str(SAMPLER_EVERY_S)]
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL)
