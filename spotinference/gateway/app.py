"""The gateway's Litestar application: OpenAI routes, health, metrics, and their lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from litestar import Litestar, Request, Response, asgi, get
from litestar.exceptions import HTTPException
from litestar.types import Receive, Scope, Send

from ..config import Settings
from ..errors import StoreBusyError
from ..keys import KeyRing
from ..store.flush_process import SpoolFlushProcess
from ..store import Store
from .access_log import AccessLoggingRecorder, KeyNames
from .errors import GatewayError, error_body
from .http_limits import ClientLimits
from .key_access import model_route, visible_models
from .key_budgets import KeyBudgets
from .key_limits import KeyLimits
from .logs import fields
from .metrics import GatewayMetrics
from .operator import OperatorAccess, operator_token
from . import endpoints
from .endpoint_relay import EndpointRelay
from .relay import Relay
from .response_homes import ResponseHomes
from .requests import CHAT, COMPLETIONS
from .routing import Router
from .usage import UsageRecorder

if TYPE_CHECKING:
    from ..billing.budget import BudgetGate, GateState
    from ..store import SpoolWriter
    from .fleet_runtime import FleetRuntime

log = logging.getLogger(__name__)

KEY_REFRESH_S = 0.25
BUDGET_REFRESH_S = 1.0


@dataclass
class GatewayOptions:
    require_keys: bool = True
    max_body_bytes: int = 4 * 1024 * 1024
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 300.0
    total_timeout_s: float = 1800.0
    flush_interval_s: float = 1.0
    keepalive_s: float = 15.0
    max_response_body_bytes: int = 64 * 1024 * 1024
    client_limits: ClientLimits = ClientLimits()
    operator_token: str | None = None  # None: only the operator listener sees the operator's view
    operator_port: int | None = None
    budget_timezone: str = "UTC"  # where per-key budget days and months start


class GatewayApp:
    """The gateway's ASGI entry point.

    ``POST`` to the two completion routes goes straight to the relay; everything else (the other
    routes, wrong methods, lifespan) to the Litestar app. Measured at 64 streams, Litestar's
    middleware wrapping of ``send`` cost ~13% of the gateway's CPU, paid on every chunk.
    """

    HOT_PATHS = frozenset({CHAT, COMPLETIONS})

    def __init__(self, litestar: Litestar, relay: Relay, client_limits: ClientLimits | None = None,
                 openai_relay: EndpointRelay | None = None, anthropic_relay: EndpointRelay | None = None) -> None:
        self.litestar = litestar
        self.relay = relay
        # The other routes vLLM serves (endpoints.py), also past Litestar; checked only after the
        # two hot paths, so they add nothing to them.
        self.openai_relay = openai_relay
        self.anthropic_relay = anthropic_relay
        # Read by the server's protocol (http_limits.LimitedHttpToolsProtocol) for each connection.
        self.client_limits = client_limits or ClientLimits()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.HOT_PATHS:
            await self.relay.handle(scope, receive, send)  # type: ignore[arg-type]
            return
        if scope["type"] == "http" and self.openai_relay is not None:
            found = endpoints.match(scope["path"])
            if found is not None:
                spec, response_id = found
                relay = self.anthropic_relay if spec.anthropic else self.openai_relay
                await relay.handle_endpoint(scope, receive, send, spec, response_id)  # type: ignore[union-attr, arg-type]
                return
        await self.litestar(scope, receive, send)


def create_app(
    store: Store, router: Router, options: GatewayOptions, runtime: FleetRuntime | None = None,
    gate: BudgetGate | None = None,
) -> GatewayApp:
    metrics = GatewayMetrics()
    if runtime is not None:
        metrics.track_tiers(runtime.snapshots)
        runtime.on_decision = metrics.decision
    if gate is not None:
        metrics.track_gate(lambda: gate.state)
    keys = KeyRing(store) if options.require_keys else None
    writer = store.spool_writer("requests")
    key_names = KeyNames(store)
    recorder = AccessLoggingRecorder(UsageRecorder(writer), key_names)  # the access line after each row
    relay = Relay(
        router, keys, recorder, metrics,
        max_body_bytes=options.max_body_bytes, connect_timeout_s=options.connect_timeout_s,
        read_timeout_s=options.read_timeout_s, total_timeout_s=options.total_timeout_s,
        keepalive_s=options.keepalive_s,
    )
    relay.max_response_body_bytes = options.max_response_body_bytes
    relay.gate = gate
    budgets = KeyBudgets(keys, store, store.home / "gateway", options.budget_timezone) if keys is not None else None
    limits = KeyLimits(keys, store.home / "gateway", budgets) if keys is not None else None
    relay.limits = limits
    homes = ResponseHomes(store.home / "gateway" / "responses")
    endpoint_relays = []
    for anthropic in (False, True):
        endpoint_relay = EndpointRelay(
            router, keys, recorder, metrics, homes=homes, anthropic=anthropic,
            max_body_bytes=options.max_body_bytes, connect_timeout_s=options.connect_timeout_s,
            read_timeout_s=options.read_timeout_s, total_timeout_s=options.total_timeout_s,
            keepalive_s=options.keepalive_s,
        )
        endpoint_relay.max_response_body_bytes = options.max_response_body_bytes
        endpoint_relay.gate = gate
        endpoint_relay.limits = limits
        endpoint_relays.append(endpoint_relay)
    flusher = SpoolFlushProcess(store, writer, interval_s=options.flush_interval_s)
    created = int(time.time())

    @asgi("/v1/chat/completions", copy_scope=False)
    async def chat_completions(scope: Scope, receive: Receive, send: Send) -> None:
        await _post_only(scope, receive, send, relay)

    @asgi("/v1/completions", copy_scope=False)
    async def completions(scope: Scope, receive: Receive, send: Send) -> None:
        await _post_only(scope, receive, send, relay)

    @get("/v1/models", sync_to_thread=False)
    def models(request: Request) -> Response[bytes]:
        try:
            key_id = relay.authenticate(request.scope)  # type: ignore[arg-type]
        except GatewayError as exc:
            return Response(exc.body(), status_code=exc.status, media_type="application/json")
        data = [{"id": m, "object": "model", "created": created, "owned_by": "spotinference"}
                for m in visible_models(router, keys, key_id)]
        return Response({"object": "list", "data": data})

    @get("/v1/models/{model_id:path}", sync_to_thread=False)
    def model(request: Request, model_id: str) -> Response[bytes]:
        # vLLM serves no /v1/models/{id}: the gateway answers from its routes, as for /v1/models.
        try:
            key_id = relay.authenticate(request.scope)  # type: ignore[arg-type]
            model_id = model_id.lstrip("/")
            model_route(router, keys, key_id, model_id)
        except GatewayError as exc:
            return Response(exc.body(), status_code=exc.status, media_type="application/json")
        return Response({"id": model_id, "object": "model", "created": created, "owned_by": "spotinference"})

    operator = OperatorAccess(options.operator_token, options.operator_port)

    @get("/health", sync_to_thread=False)
    def health(request: Request) -> dict[str, Any]:
        if not operator.allows(request.scope):
            # Anyone's view: alive, and whether the budget gate lets requests through; no models,
            # tiers or figures (those are the operator's, below).
            return {"status": "ok" if gate is None or gate.state.open else "closed"}
        tiers = metrics.tier_snapshots()  # held requests: every worker's
        budget = _jsonable(gate.state.to_dict()) if gate is not None else None
        return {"status": "ok", "models": router.models(), "tiers": tiers, "budget_gate": budget}

    @get("/metrics", sync_to_thread=False)
    def prometheus(request: Request) -> Response[bytes]:
        if not operator.allows(request.scope):
            return Response(error_body(401, "/metrics needs the operator token: send 'Authorization: Bearer <token>' "
                                            "(gateway.operator_token_file), or scrape the operator port "
                                            "(gateway.operator_port)", code="operator_token_required"),
                            status_code=401, media_type="application/json")
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        flusher.start()
        sealer = asyncio.create_task(_seal_segments(writer, options.flush_interval_s))
        await asyncio.to_thread(key_names.load)
        refresher = asyncio.create_task(_refresh_keys(keys, key_names)) if keys is not None else None  # an empty ring too
        if budgets is not None:
            await _read_budgets(budgets)  # before the first request: a budget is never judged blind
        budget_reader = asyncio.create_task(_refresh_budgets(budgets)) if budgets is not None else None
        if runtime is not None:
            runtime.start()
        held = asyncio.create_task(metrics.publish_held_forever())
        if gate is not None:
            loop = asyncio.get_running_loop()

            def on_change(old: GateState, new: GateState) -> None:
                said = "gate opened" if new.open else "gate closed"
                log.log(logging.INFO if new.open else logging.WARNING, "%s: %s: %s", said, new.why, new.message,
                        extra=fields(event=said.replace(" ", "_"), reason=new.reason, why=new.why))
                if new.reason == "budget_exhausted" and runtime is not None:
                    loop.call_soon_threadsafe(runtime.hibernate_all, f"budget exhausted: {new.message}")

            gate.on_change = on_change
            await asyncio.to_thread(gate.start)
        try:
            yield
        finally:
            sealer.cancel()
            held.cancel()
            metrics.worker_stopped()
            if refresher:
                refresher.cancel()
            if budget_reader:
                budget_reader.cancel()
            if runtime is not None:
                await runtime.stop()
            if gate is not None:
                await asyncio.to_thread(gate.stop)
            await relay.close()
            for endpoint_relay in endpoint_relays:
                await endpoint_relay.close()
            # Seal this worker's segment and copy what remains, in a thread: it touches DuckDB.
            await asyncio.to_thread(flusher.stop)

    litestar = Litestar(
        route_handlers=[chat_completions, completions, models, model, health, prometheus],
        lifespan=[lifespan],
        exception_handlers={HTTPException: _openai_shaped},
        openapi_config=None,
        logging_config=None,
    )
    return GatewayApp(litestar, relay, options.client_limits, *endpoint_relays)


async def _post_only(scope: Scope, receive: Receive, send: Send, relay: Relay) -> None:
    if scope["method"] != "POST":
        await send({"type": "http.response.start", "status": 405,
                    "headers": [(b"content-type", b"application/json"), (b"allow", b"POST")]})
        await send({"type": "http.response.body", "body": error_body(405, f"{scope['method']} is not allowed here: use POST")})
        return
    await relay.handle(scope, receive, send)  # type: ignore[arg-type]


async def _seal_segments(writer: SpoolWriter, interval_s: float) -> None:
    # Sealing is a close(2) on the event loop; the copy into DuckDB happens in the flush process.
    while True:
        await asyncio.sleep(interval_s / 2)
        writer.rotate_if_due()


async def _refresh_keys(keys: KeyRing, names: KeyNames) -> None:
    # A revoked key stops working within KEY_REFRESH_S plus one database read.
    while True:
        await asyncio.sleep(KEY_REFRESH_S)
        try:
            if await asyncio.to_thread(keys.refresh):
                await asyncio.to_thread(names.load)  # the access log's names of new keys
        except StoreBusyError as exc:  # the lake's catalog restarting, say: expected, one line
            log.warning("API key refresh failed; keeping the previous keys: %s", exc.message)
        except Exception:  # noqa: BLE001 - keep serving with the last known keys
            log.exception("API key refresh failed; keeping the previous keys")


async def _refresh_budgets(budgets: KeyBudgets) -> None:
    # The ledger's side of per-key budgets: a new billing sample is seen within a second, and the
    # first key given a budget within KEY_REFRESH_S of the ring seeing it.
    read_at, wanted = time.monotonic(), budgets.wanted()
    while True:
        await asyncio.sleep(KEY_REFRESH_S)
        was, wanted = wanted, budgets.wanted()
        if wanted and (not was or time.monotonic() - read_at >= BUDGET_REFRESH_S):
            read_at = time.monotonic()
            await _read_budgets(budgets)


async def _read_budgets(budgets: KeyBudgets) -> None:
    try:
        if budgets.wanted():
            await asyncio.to_thread(budgets.refresh)
    except StoreBusyError as exc:
        log.warning("per-key budget refresh failed; keeping the previous figures: %s", exc.message)
    except Exception:  # noqa: BLE001 - keep serving with the last prices and statements
        log.exception("per-key budget refresh failed; keeping the previous figures")


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if not isinstance(v, bool | int | float | str | type(None)) else v) for k, v in data.items()}


def _openai_shaped(request: Request, exc: HTTPException) -> Response[bytes]:
    detail = exc.detail
    allow = (exc.headers or {}).get("allow")
    if exc.status_code == 405 and allow:
        # Worded as chat's and the other routes' 405; OPTIONS is Litestar's own answer, not a use.
        methods = " or ".join(m.strip() for m in allow.split(",") if m.strip() != "OPTIONS")
        detail = f"{request.method} is not allowed here: use {methods}"
    return Response(error_body(exc.status_code, detail), status_code=exc.status_code, media_type="application/json",
                    headers=exc.headers)


def options_from_settings(settings: Settings) -> GatewayOptions:
    gateway = settings.gateway
    return GatewayOptions(
        require_keys=gateway.require_keys,
        max_body_bytes=gateway.max_body_bytes,
        connect_timeout_s=gateway.upstream_connect_timeout_s,
        read_timeout_s=gateway.upstream_read_timeout_s,
        total_timeout_s=gateway.upstream_total_timeout_s,
        keepalive_s=gateway.keepalive_s,
        max_response_body_bytes=gateway.max_response_body_bytes,
        client_limits=ClientLimits(max_header_bytes=gateway.max_header_bytes, header_timeout_s=gateway.header_timeout_s,
                                   max_connections=gateway.max_connections),
        operator_token=operator_token(settings, create=True),
        operator_port=gateway.operator_port,
        budget_timezone=settings.budget.timezone,
    )
