"""The hot path: relay one completion request to an engine and count its tokens.

Raw ASGI (mounted in Litestar as an ``asgi`` route) so that no framework work runs per request
or per chunk. Upstream calls use the minimal keep-alive client in ``upstream.py``: measured on
these machines, httpx's streaming client added 3–68 ms at P95 for one stream and saturated at 64,
aiohttp about 1 ms, and per-request and per-chunk client work is most of what the gateway adds
(shared/reference/gateway-performance.md and tests/benchmarks/gateway_overhead.py).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import time
from dataclasses import dataclass
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from ..keys import KeyRing
from .callback_send import CallbackSender
from .errors import GatewayError, stream_error_event
from .metrics import GatewayMetrics
from .requests import ClientGone, ClientRequest, header, parse_request, read_body
from .routing import Node, Route, Router
from .sse import StreamState
from .upstream import (
    UpstreamClosedError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTimeoutError,
    encode_headers,
)
from .usage import UsageRecorder, UsageRow

log = logging.getLogger(__name__)

RETRY_AFTER_S = 10
CLIENT_CLOSED = 499  # nginx's convention for "the client went away before the answer"
UNKNOWN_MODEL_LABEL = "(unknown)"


@dataclass
class Exchange:
    """One request's outcome, filled in as the relay learns it."""

    request_id: str
    started_unix: float  # time.time(): the row's datetime is built off the path to the engine
    t0: float
    request: ClientRequest | None = None
    key_id: str | None = None
    node: Node | None = None
    status: int = 0
    ttft_s: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    error: str | None = None
    aborted: bool = False
    recorded: bool = False
    response_complete: bool = False  # the last byte was handed to the server
    headers_sent: bool = False  # a held stream already got its 200 and keep-alive comments
    wake_wait_s: float | None = None  # time held while the tier woke


class Relay:
    def __init__(
        self,
        router: Router,
        keys: KeyRing | None,
        recorder: UsageRecorder,
        metrics: GatewayMetrics,
        *,
        max_body_bytes: int,
        connect_timeout_s: float,
        read_timeout_s: float = 300.0,
        total_timeout_s: float = 1800.0,
        keepalive_s: float = 15.0,
    ) -> None:
        self.router = router
        self.keys = keys
        self.recorder = recorder
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.total_timeout_s = total_timeout_s
        self.keepalive_s = keepalive_s
        self.gate: Any = None  # the budget gate (billing.budget.BudgetGate), when the fleet has billing
        self._pools: dict[str, UpstreamPool] = {}
        self._fixed_headers: dict[tuple[str, str | None], bytes] = {}
        # Request ids: random per process (each worker builds its own Relay), then a counter. A
        # uuid4 per request is a getrandom(2) call on the path to the engine.
        self._id_prefix = "req-" + os.urandom(8).hex()
        self._id_counter = itertools.count()

    # -- upstream clients ------------------------------------------------------------------

    def pool(self, node: Node) -> UpstreamPool:
        """One pool of keep-alive connections per engine node."""
        pool = self._pools.get(node.base_url)
        if pool is None:
            pool = self._pools[node.base_url] = UpstreamPool(
                node.base_url, connect_timeout_s=self.connect_timeout_s, read_timeout_s=self.read_timeout_s,
                total_timeout_s=self.total_timeout_s)
        return pool

    def _node_headers(self, node: Node) -> bytes:
        """The headers every request to this node carries (its engine key among them), encoded once."""
        cache_key = (node.base_url, node.authorization)
        found = self._fixed_headers.get(cache_key)
        if found is None:
            fixed = [("Content-Type", "application/json")]
            if node.authorization:
                fixed.append(("Authorization", node.authorization))
            found = self._fixed_headers[cache_key] = encode_headers(fixed)
        return found

    async def close(self) -> None:
        for pool in self._pools.values():
            await pool.close()
        self._pools.clear()

    # -- request handling ------------------------------------------------------------------

    def _next_request_id(self) -> str:
        return f"{self._id_prefix}{next(self._id_counter):016x}"

    def authenticate(self, scope: dict[str, Any]) -> str | None:
        if self.keys is None:
            return None
        value = header(scope, b"authorization")
        if not value or not value.startswith(b"Bearer "):
            raise GatewayError(401, "missing API key: send 'Authorization: Bearer sk-spot-...'", code="invalid_api_key")
        key_id = self.keys.key_id_for(value[7:].decode("latin-1").strip())
        if key_id is None:
            raise GatewayError(401, "incorrect or revoked API key", code="invalid_api_key")
        return key_id

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        exchange = Exchange(self._next_request_id(), time.time(), time.perf_counter())
        try:
            exchange.key_id = self.authenticate(scope)
        except GatewayError as exc:
            # Unauthenticated traffic is counted, not logged row by row: anyone could flood it.
            self.metrics.answered("", exc.status)
            await self._send_error(send, exc, exchange.request_id)
            return
        try:
            body = await read_body(scope, receive, self.max_body_bytes)
            exchange.request = parse_request(scope["path"], body)
            route = self.router.route(exchange.request.model)
            if route is None:
                known = ", ".join(self.router.models()) or "none"
                raise GatewayError(
                    404, f"The model '{exchange.request.model}' does not exist (known models: {known})",
                    param="model", code="model_not_found",
                )
            if self.gate is not None and not self.gate.state.open:
                state = self.gate.state  # fail closed: never serve what cannot be billed or paid for
                raise GatewayError(state.http_status or 503, state.message, code=state.reason,
                                   retry_after_s=state.retry_after_s or RETRY_AFTER_S)
            if route.controller is None and not route.nodes:
                raise GatewayError(
                    503, f"no engine is serving tier '{route.tier}' for model '{route.model}' right now",
                    code="no_serving_node", retry_after_s=RETRY_AFTER_S,
                )
        except ClientGone:
            return
        except GatewayError as exc:
            exchange.status, exchange.error = exc.status, exc.message
            self._record(exchange)
            await self._send_error(send, exc, exchange.request_id)
            return
        await self._relay_watching_client(exchange, route, receive, send)

    async def _relay_watching_client(self, exchange: Exchange, route: Route, receive: Any, send: Any) -> None:
        model = exchange.request.model  # type: ignore[union-attr]
        controller = route.controller
        in_flight = self.metrics.model(model).in_flight
        in_flight.inc()
        # The relay runs in this task (no extra hop before the first byte); a small watcher task
        # cancels it if the client leaves, which closes the upstream connection so that vLLM
        # aborts the request and frees the GPU. The watcher starts on the loop's next turn, so
        # making it is not on the way to the engine: this task runs until the request is sent.
        relay_task = asyncio.current_task()
        watcher: asyncio.Future[None] | None = None
        over = False

        def client_left(done: asyncio.Future[None]) -> None:
            if not done.cancelled() and not exchange.response_complete and relay_task is not None:
                exchange.aborted = True
                relay_task.cancel()

        def start_watching() -> None:
            nonlocal watcher
            if not over:
                watcher = asyncio.ensure_future(_wait_for_disconnect(receive))
                watcher.add_done_callback(client_left)

        asyncio.get_running_loop().call_soon(start_watching)
        if controller is not None:
            controller.request_started()
        try:
            exchange.node = route.acquire() or await self._hold(exchange, controller, send)
            try:
                await self._relay(exchange, send, reroute=controller is not None)
            except _Reroute:
                # The node could not be reached before any answer (a reclaimed spot VM, a dead
                # engine): once, on another serving node, or held for a wake or the fallback.
                controller.node_failed(exchange.node)
                exchange.node.in_flight -= 1
                exchange.node = None
                exchange.node = route.acquire() or await self._hold(exchange, controller, send)
                await self._relay(exchange, send, reroute=False)
        except GatewayError as exc:  # held past the cap, or the tier and its fallback cannot serve
            exchange.status, exchange.error = exc.status, exc.message
            self._record(exchange)
            exchange.response_complete = True
            await self._send_error(send, exc, exchange.request_id, headers_sent=exchange.headers_sent)
        except asyncio.CancelledError:
            if not exchange.aborted:
                raise  # the server is shutting down, not the client leaving
        except OSError:
            if not exchange.response_complete:
                exchange.aborted = True  # the server refused a send: the client is gone
        except Exception as exc:  # noqa: BLE001 - logged with the row, never a bare 500
            log.error("relay of %s failed", exchange.request_id, exc_info=exc)
            exchange.error = exchange.error or f"gateway error: {type(exc).__name__}"
        finally:
            over = True
            if watcher is not None:
                watcher.remove_done_callback(client_left)
                watcher.cancel()
            if exchange.node is not None:
                exchange.node.in_flight -= 1
                if exchange.node.owner is not None and exchange.node.owner is not controller:
                    exchange.node.owner.request_finished()  # a fallback tier served it: not idle
            if controller is not None:
                controller.request_finished()
            in_flight.dec()
            if exchange.aborted and not exchange.recorded:
                exchange.status = CLIENT_CLOSED
            self._record(exchange)

    async def _hold(self, exchange: Exchange, controller: Any, send: Any) -> Node:
        """Wait for the tier to serve (it is woken by the first held request); streams get an SSE
        comment at once and then every keepalive_s. Past the tier's cap: 503 with Retry-After."""
        if controller is None:
            raise GatewayError(503, "no engine is serving this model right now", code="no_serving_node",
                               retry_after_s=RETRY_AFTER_S)
        future = controller.hold()
        cap_s = float(controller.tier.wake_timeout_s)
        started = time.perf_counter()
        stream = bool(exchange.request and exchange.request.stream)
        released = False
        try:
            while True:
                elapsed = time.perf_counter() - started
                if stream:
                    await self._keepalive(exchange, send, controller, elapsed)
                if elapsed >= cap_s:
                    raise GatewayError(
                        503, f"tier '{controller.tier.name}' did not start serving within {cap_s:.0f} s (wake_timeout_s)",
                        code="wake_timeout", retry_after_s=RETRY_AFTER_S,
                    )
                wait = min(self.keepalive_s, cap_s - elapsed) if stream else cap_s - elapsed
                try:
                    node = await asyncio.wait_for(asyncio.shield(future), wait)
                except TimeoutError:
                    continue
                released = True
                return node
        finally:
            exchange.wake_wait_s = (exchange.wake_wait_s or 0.0) + time.perf_counter() - started
            if not future.done():
                future.cancel()
            elif not released and not future.cancelled() and future.exception() is None:
                future.result().in_flight -= 1  # released onto a node just as this request gave up

    async def _keepalive(self, exchange: Exchange, send: Any, controller: Any, elapsed: float) -> None:
        if not exchange.headers_sent:
            exchange.headers_sent = True
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                (b"x-request-id", exchange.request_id.encode())]})
        comment = f": waking tier {controller.tier.name} ({elapsed:.0f} s)\n\n".encode()
        await send({"type": "http.response.body", "body": comment, "more_body": True})

    async def _relay(self, exchange: Exchange, send: Any, *, reroute: bool = False) -> None:
        request = exchange.request
        assert request is not None and exchange.node is not None
        try:
            await self._exchange(exchange, send)
            return
        except (UpstreamConnectError, UpstreamClosedError) as exc:
            if not exc.request_unseen:
                # Written, then closed: the engine may have run it, so it is not sent again.
                error = GatewayError(502, f"the engine failed: {exc}", code="engine_error")
            elif reroute:
                # The engine never saw it: the node is gone (a reclaimed spot VM, a dead engine).
                raise _Reroute from exc
            elif isinstance(exc, UpstreamTimeoutError):
                error = GatewayError(504, f"the engine for '{request.model}' timed out: {exc}", code="engine_timeout")
            else:
                error = GatewayError(503, f"the engine for '{request.model}' is unreachable ({exc})",
                                     code="engine_unreachable", retry_after_s=RETRY_AFTER_S)
        except UpstreamTimeoutError as exc:
            error = GatewayError(504, f"the engine timed out: {exc}", code="engine_timeout")
        except UpstreamError as exc:
            error = GatewayError(502, f"the engine failed: {exc}", code="engine_error")
        # Only failures before any byte reached the client get here: a stream's own failure
        # becomes an error event where it happens.
        exchange.status, exchange.error = error.status, error.message
        self._record(exchange)
        exchange.response_complete = True
        await self._send_error(send, error, exchange.request_id, headers_sent=exchange.headers_sent)

    async def _exchange(self, exchange: Exchange, send: Any) -> None:
        request = exchange.request
        node = exchange.node
        assert request is not None and node is not None
        headers = b"%sX-Request-Id: %s\r\n" % (self._node_headers(node), exchange.request_id.encode())
        upstream = await self.pool(node).request("POST", request.endpoint, request.upstream_body, headers)
        try:
            if request.stream and upstream.status == 200:
                await self._relay_stream(exchange, upstream, send)
            else:
                await self._relay_whole(exchange, upstream, send)
        finally:
            upstream.close()  # back to the pool if read to the end, else closed: vLLM aborts

    async def _relay_whole(self, exchange: Exchange, upstream: UpstreamResponse, send: Any) -> None:
        payload = await upstream.read()
        exchange.status = upstream.status
        if upstream.status == 200:
            _take_usage_from_body(exchange, payload)
        else:
            exchange.error = payload[:500].decode("utf-8", "replace")
        self._record(exchange)  # before the answer leaves: a kill -9 now loses no row
        if exchange.headers_sent:
            # A held stream already answered 200: the engine's error travels as an error event.
            exchange.response_complete = True
            event = b"data: " + payload.strip() + b"\n\n" if payload.strip() else stream_error_event(
                upstream.status, f"the engine answered {upstream.status}", "engine_error")
            await send({"type": "http.response.body", "body": event, "more_body": False})
            return
        content_type = upstream.header(b"content-type", b"application/json")
        await send({
            "type": "http.response.start", "status": upstream.status,
            "headers": [(b"content-type", content_type), (b"x-request-id", exchange.request_id.encode())],
        })
        exchange.response_complete = True
        await send({"type": "http.response.body", "body": payload, "more_body": False})

    async def _relay_stream(self, exchange: Exchange, upstream: UpstreamResponse, send: Any) -> None:
        state = exchange.request.stream_state  # type: ignore[union-attr]
        assert state is not None
        exchange.status = 200
        if not exchange.headers_sent:
            exchange.headers_sent = True
            await send({
                "type": "http.response.start", "status": 200,
                "headers": [(b"content-type", upstream.header(b"content-type", b"text/event-stream")),
                            (b"cache-control", b"no-cache"), (b"x-request-id", exchange.request_id.encode())],
            })
        # Engine bytes go to the client from the upstream read callback, not via this task.
        sender = CallbackSender(send, pause=upstream.pause_reading, resume=upstream.resume_reading,
                                failed=upstream.interrupt)
        try:
            try:
                await upstream.deliver(self._stream_sink(exchange, state, sender))
            except UpstreamError as exc:
                exchange.error = f"engine stream failed: {exc}"
                if isinstance(exc, UpstreamTimeoutError):
                    exchange.status = 504
            await sender.drain()  # what was read reaches the client before any error event
        finally:
            sender.cancel()  # nothing left unless the relay is being torn down
        if state.done:
            return  # [DONE] went out with the end of the response
        # The response is closed (not pooled) by the caller: vLLM aborts what it still runs.
        exchange.error = exchange.error or "engine stream ended without [DONE]"
        timed_out = exchange.status == 504
        exchange.status = 504 if timed_out else 502
        self._finish_stream(exchange)
        exchange.response_complete = True
        await send({
            "type": "http.response.body", "more_body": False,
            "body": state.drain() + stream_error_event(
                exchange.status, f"the engine failed mid-stream: {exchange.error}",
                "engine_timeout" if timed_out else "engine_error"),
        })

    def _stream_sink(self, exchange: Exchange, state: StreamState, sender: CallbackSender) -> Callable[[bytes], None]:
        feed = state.feed

        def sink(data: bytes) -> None:
            if exchange.response_complete:
                return  # nothing follows [DONE] on the client's side
            try:
                out, first_token = feed(data)
                if first_token:
                    exchange.ttft_s = time.perf_counter() - exchange.t0
                if state.done:
                    self._finish_stream(exchange)  # recorded before [DONE] reaches the client
                    # [DONE] and the end of the response leave in one write.
                    exchange.response_complete = True
                    sender.push({"type": "http.response.body", "body": out, "more_body": False})
                elif out:
                    sender.push({"type": "http.response.body", "body": out, "more_body": True})
            except Exception as exc:  # noqa: BLE001 - raised by deliver() in the relay's task, not into the parser
                sender.fail(exc)

        return sink

    def _finish_stream(self, exchange: Exchange) -> None:
        state = exchange.request.stream_state  # type: ignore[union-attr]
        usage = state.usage() if state else None
        if usage:
            exchange.prompt_tokens, exchange.completion_tokens = usage
        exchange.finish_reason = state.finish_reason if state else None
        self._record(exchange)

    # -- accounting ----------------------------------------------------------------------

    def _record(self, exchange: Exchange) -> None:
        if exchange.recorded:
            return
        request = exchange.request
        state = request.stream_state if request else None
        if state is not None and exchange.aborted:
            usage = state.usage()  # the last running total vLLM sent before the abort
            if usage:
                exchange.prompt_tokens, exchange.completion_tokens = usage
            exchange.finish_reason = exchange.finish_reason or state.finish_reason
        exchange.recorded = True
        elapsed_s = time.perf_counter() - exchange.t0
        started_at = datetime.fromtimestamp(exchange.started_unix, UTC)
        model = request.model if request else ""
        node = exchange.node
        row = UsageRow(
            request_id=exchange.request_id,
            gateway_id=self.recorder.gateway_id,
            model=model,
            started_at=started_at,
            finished_at=started_at + timedelta(seconds=elapsed_s),
            http_status=exchange.status,
            key_id=exchange.key_id,
            tier=node.tier if node else None,
            node=node.name if node else None,
            ttft_ms=None if exchange.ttft_s is None else round(exchange.ttft_s * 1000, 3),
            wake_wait_ms=None if exchange.wake_wait_s is None else round(exchange.wake_wait_s * 1000, 3),
            prompt_tokens=exchange.prompt_tokens,
            completion_tokens=exchange.completion_tokens,
            finish_reason=exchange.finish_reason,
            client_aborted=exchange.aborted,
            streamed=bool(request and request.stream),
            error=exchange.error,
        )
        try:
            self.recorder.record(row)
        except OSError:
            log.exception("usage row for %s could not be spooled", exchange.request_id)
        if self.router.route(model) is None:
            # A model name is the client's input: unknown ones share one label, so that no
            # client can grow the metrics without bound (the usage row keeps the name).
            self.metrics.answered(UNKNOWN_MODEL_LABEL if model else "", exchange.status)
            return
        self.metrics.answered(model, exchange.status)
        metrics = self.metrics.model(model)
        if exchange.prompt_tokens:
            metrics.prompt_tokens.inc(exchange.prompt_tokens)
        if exchange.completion_tokens:
            metrics.completion_tokens.inc(exchange.completion_tokens)
        if node is not None:
            metrics.upstream_latency.observe(elapsed_s)
        if exchange.ttft_s is not None:
            metrics.ttft.observe(exchange.ttft_s)

    async def _send_error(self, send: Any, error: GatewayError, request_id: str, *, headers_sent: bool = False) -> None:
        if headers_sent:
            event = stream_error_event(error.status, error.message, error.code or "error")
            await send({"type": "http.response.body", "body": event, "more_body": False})
            return
        await send({
            "type": "http.response.start", "status": error.status,
            "headers": [*error.headers(), (b"x-request-id", request_id.encode())],
        })
        await send({"type": "http.response.body", "body": error.body(), "more_body": False})


class _Reroute(Exception):
    """The chosen node could not be reached before any answer: try the request elsewhere once."""


async def _wait_for_disconnect(receive: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def _take_usage_from_body(exchange: Exchange, payload: bytes) -> None:
    try:
        data = json.loads(payload)
        usage = data.get("usage") or {}
        exchange.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        exchange.completion_tokens = int(usage.get("completion_tokens") or 0)
        choices = data.get("choices") or []
        if choices and isinstance(choices[0], dict):
            exchange.finish_reason = choices[0].get("finish_reason")
    except (ValueError, TypeError, AttributeError):
        exchange.error = "engine answered 200 with a body that is not a completion"
