"""The hot path: relay one completion request to an engine and count its tokens.

Raw ASGI (mounted in Litestar as an ``asgi`` route) so that no framework work runs per request
or per chunk. Upstream calls use the minimal keep-alive client in ``upstream.py``: measured on
these machines, httpx's streaming client added 3–68 ms at P95 for one stream and saturated at 64,
aiohttp about 1 ms, and per-request and per-chunk client work is most of what the gateway adds
(shared/reference/gateway-performance.md and tests/benchmarks/gateway_overhead.py).
"""

from __future__ import annotations

import asyncio
import codecs
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
from .client_auth import authenticate as authenticate_client
from .errors import EngineFault, GatewayError, stream_error_event
from .key_access import KeyExpired, model_route
from .key_refusals import refusal_of
from .metrics import GatewayMetrics
from .requests import ClientGone, ClientRequest, parse_request, read_body
from .routing import Node, Route, Router
from .sse import StreamState, UsageError, parse_usage
from .upstream import (
    UpstreamClosedError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTimeoutError,
    encode_headers,
)
from .usage import BodyUsage, UsageRecorder, UsageRow

log = logging.getLogger(__name__)

RETRY_AFTER_S = 10
MAX_RESPONSE_BODY_BYTES = 64 * 1024 * 1024  # GatewaySettings.max_response_body_bytes
# A non-streamed answer up to this size is read whole before anything is sent, so that an engine
# fault found at its end (usage it cannot mean) is still a clean 502; a longer one is streamed
# to the client as it arrives, and such a fault then cuts the connection.
WHOLE_BODY_BYTES = 1024 * 1024
ERROR_BODY_BYTES = 64 * 1024  # of an engine's error answer relayed into a held stream
# Statuses relayed as the engine sent them; any other (a 1xx, a 3xx, 299, 600+) is an engine fault.
RELAYED_STATUSES = frozenset({200, *range(400, 512)})
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
    prompt_tokens: int | None = 0  # None: unknown (the engine did work no usage described)
    completion_tokens: int | None = 0
    finish_reason: str | None = None
    error: str | None = None
    aborted: bool = False
    recorded: bool = False
    response_complete: bool = False  # the last byte was handed to the server
    headers_sent: bool = False  # an SSE response (a stream, or a held one's keep-alives) has begun
    raw_body_started: bool = False  # a non-streamed answer has begun: a failure now can only cut it
    engine_answered: bool = False  # the engine's status line arrived: a fault now is the engine's
    wake_wait_s: float | None = None  # time held while the tier woke
    # Class attributes, not fields: set only off the hot path (an error before the request was
    # read, and the other endpoints), so chat's Exchange is built as before.
    endpoint = None  # the route, for a row whose request could not be read
    response_id = None  # a Responses answer's id, for routing what refers to it
    ticket = None  # its place in the key's limits (key_limits.Ticket), for a key with limits
    refused = None  # which of the key's limits refused it (key_refusals.py), for the key's statement


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
        max_response_body_bytes: int = MAX_RESPONSE_BODY_BYTES,
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
        self.max_response_body_bytes = max_response_body_bytes
        self.gate: Any = None  # the budget gate (billing.budget.BudgetGate), when the fleet has billing
        self.limits: Any = None  # per-key rate limits (key_limits.KeyLimits), when keys are required
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
        return None if self.keys is None else authenticate_client(self.keys, scope)

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        exchange = Exchange(self._next_request_id(), time.time(), time.perf_counter())
        try:
            exchange.key_id = self.authenticate(scope)
        except GatewayError as exc:
            exchange.endpoint = scope["path"]  # type: ignore[misc]
            await self._refuse_unauthenticated(exchange, exc, send)
            return
        try:
            body = await read_body(scope, receive, self.max_body_bytes)
            try:
                exchange.request = parse_request(scope["path"], body)
            except GatewayError:
                raise
            except Exception as exc:  # noqa: BLE001 - the client's bytes broke the parser: its fault, a 400
                log.warning("request %s could not be parsed: %r", exchange.request_id, exc)
                raise GatewayError(400, f"request body could not be read ({type(exc).__name__})",
                                   code="invalid_request") from None
            state = exchange.request.stream_state
            if state is not None:
                n_is_int = True
                if b'"n"' in body:
                    state.choices_per_prompt, n_is_int = _choices_per_prompt(body)
                # One prompt, n=1 (chat, and most completions): no choice index to read per chunk.
                state.one_choice = state.choices_per_prompt == 1 and n_is_int and exchange.request.one_prompt
            route = model_route(self.router, self.keys, exchange.key_id, exchange.request.model)
            if self.gate is not None and not self.gate.state.open:
                state = self.gate.state  # fail closed: never serve what cannot be billed or paid for
                raise GatewayError(state.http_status or 503, state.message, code=state.reason,
                                   retry_after_s=state.retry_after_s or RETRY_AFTER_S)
            if route.controller is None and not route.nodes:
                raise GatewayError(
                    503, f"no engine is serving tier '{route.tier}' for model '{route.model}' right now",
                    code="no_serving_node", retry_after_s=RETRY_AFTER_S,
                )
            if self.limits is not None and (ticket := self.limits.admit(exchange.key_id, exchange.request, route.tier)) is not None:
                exchange.ticket, send = ticket, ticket.wrap(send)  # the last check: 429 past the key's limits
        except ClientGone:
            return
        except GatewayError as exc:
            exchange.status, exchange.error = exc.status, exc.message
            exchange.endpoint = scope["path"]  # type: ignore[misc]
            self._note_refusal(exchange, exc)
            if exc.status == 400:
                self.metrics.failed("client")
            self._record(exchange)
            await self._send_error(send, exc, exchange.request_id)
            return
        except Exception as exc:  # noqa: BLE001 - the last resort before the engine: never a bare 500
            exchange.endpoint = scope["path"]  # type: ignore[misc]
            await self._last_resort(exchange, send, exc)
            return
        await self._relay_watching_client(exchange, route, receive, send)

    async def _refuse_unauthenticated(self, exchange: Exchange, exc: GatewayError, send: Any) -> None:
        if isinstance(exc, KeyExpired):
            # A known key refused by its own expiry: a row, so that its statement shows the refusal.
            exchange.key_id, exchange.status, exchange.error = exc.key_id, exc.status, exc.message
            exchange.refused = "expired"  # type: ignore[misc]
            self._record(exchange)
        else:
            # Unauthenticated traffic is counted, not logged row by row: anyone could flood it.
            self.metrics.answered("", exc.status)
        await self._send_error(send, exc, exchange.request_id)

    def _note_refusal(self, exchange: Exchange, exc: GatewayError) -> None:
        if exchange.key_id is not None:
            model = exchange.request.model if exchange.request is not None else None
            exchange.refused = refusal_of(exc, self.router, model)  # type: ignore[misc]

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
        except Exception as exc:  # noqa: BLE001 - the last resort: an OpenAI-shaped answer, a row, a metric
            await self._last_resort(exchange, send, exc)
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
            if exc.request_unseen:
                exchange.prompt_tokens = exchange.completion_tokens = 0  # nothing reached the engine
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
        except EngineFault as exc:
            if exchange.raw_body_started or exchange.headers_sent:
                raise  # the last resort ends what was begun
            self.metrics.failed("engine")
            error = GatewayError(502, f"the engine's answer cannot be relayed: {exc}", code="engine_error")
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
        # From the moment the request may reach the engine, the engine may be doing work: unless
        # a usage object says how much, it is unknown (NULL), not 0.
        exchange.prompt_tokens = exchange.completion_tokens = None
        upstream = await self.pool(node).request("POST", request.endpoint, request.upstream_body, headers)
        exchange.engine_answered = True
        try:
            if request.stream and upstream.status == 200:
                await self._relay_stream(exchange, upstream, send)
            else:
                await self._relay_whole(exchange, upstream, send)
        finally:
            upstream.close()  # back to the pool if read to the end, else closed: vLLM aborts

    async def _relay_whole(self, exchange: Exchange, upstream: UpstreamResponse, send: Any) -> None:
        """A non-streamed answer (or an engine's error answer): to the client as it arrives.

        Nothing is parsed whole: usage is found by ``BodyUsage`` as the bytes pass. Up to
        WHOLE_BODY_BYTES is read before anything is sent (most answers: an engine fault is then a
        clean 502); a longer body is sent on as it arrives, up to max_response_body_bytes."""
        status = upstream.status
        if status not in RELAYED_STATUSES:
            raise EngineFault(f"the engine answered with HTTP status {status}")
        exchange.status = status
        if status != 200:
            exchange.prompt_tokens = exchange.completion_tokens = 0  # refused before generating
        cap = self.max_response_body_bytes
        declared = upstream.header(b"content-length")
        if declared.isdigit() and int(declared) > cap:
            raise EngineFault(f"the engine's answer is {int(declared)} bytes, over the gateway's "
                              f"max_response_body_bytes of {cap}")
        found = BodyUsage()
        utf8 = _Utf8Check()
        held: list[bytes] = []
        size = 0
        while True:
            chunk = await upstream.next_chunk()
            if not chunk:
                utf8.end()
                break
            size += len(chunk)
            if size > cap:
                raise EngineFault(f"the engine's answer passed the gateway's max_response_body_bytes of {cap}")
            utf8.feed(chunk)
            if status == 200:
                found.feed(chunk)
            if exchange.raw_body_started:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            elif size <= WHOLE_BODY_BYTES or exchange.headers_sent:
                if size <= ERROR_BODY_BYTES or not exchange.headers_sent:
                    held.append(chunk)  # a held stream keeps only what its error event can carry
            else:
                await self._start_raw_body(exchange, upstream, send)
                await send({"type": "http.response.body", "body": b"".join(held) + chunk, "more_body": True})
                held.clear()
        payload = b"".join(held)
        if status == 200:
            self._take_body_usage(exchange, found)
        else:
            exchange.error = payload[:500].decode("utf-8", "replace")
        self._record(exchange)  # before the answer's end leaves: a kill -9 now loses no row
        if exchange.headers_sent:
            # A held stream already answered 200: the engine's error travels as an error event.
            exchange.response_complete = True
            event = b"data: " + payload.strip() + b"\n\n" if payload.strip() and b"\n\n" not in payload else (
                self._error_event(status if status >= 400 else 502, f"the engine answered {status}", "engine_error"))
            await send({"type": "http.response.body", "body": event, "more_body": False})
            return
        if not exchange.raw_body_started:
            await self._start_raw_body(exchange, upstream, send)
        exchange.response_complete = True
        await send({"type": "http.response.body", "body": payload, "more_body": False})

    async def _start_raw_body(self, exchange: Exchange, upstream: UpstreamResponse, send: Any) -> None:
        exchange.raw_body_started = True
        await send({
            "type": "http.response.start", "status": upstream.status,
            "headers": [(b"content-type", upstream.header(b"content-type", b"application/json")),
                        (b"x-request-id", exchange.request_id.encode())],
        })

    def _take_body_usage(self, exchange: Exchange, found: BodyUsage) -> None:
        """Usage and finish reason from a 200 answer; an engine fault if the usage is not a bill."""
        exchange.finish_reason = found.finish_reason or None
        if found.usage is None:
            # A 200 without usage: the client has its answer, the tokens stay unknown.
            exchange.error = "the engine's answer carried no usage" + (" (oversized)" if found.oversized else "")
            return
        exchange.prompt_tokens, exchange.completion_tokens = parse_usage(found.usage)  # UsageError: 502

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
                await upstream.deliver(self._stream_sink(exchange, state, sender, upstream.interrupt))
            except (UpstreamError, EngineFault) as exc:
                exchange.error = f"engine stream failed: {exc}"
                if isinstance(exc, UpstreamTimeoutError):
                    exchange.status = 504
                if isinstance(exc, EngineFault):
                    self.metrics.failed("engine")
            await sender.drain()  # what was read reaches the client before any error event
        finally:
            sender.cancel()  # nothing left unless the relay is being torn down
        if exchange.response_complete:
            return  # [DONE] went out with the end of the response
        # The response is closed (not pooled) by the caller: vLLM aborts what it still runs.
        exchange.error = exchange.error or "engine stream ended without [DONE]"
        timed_out = exchange.status == 504
        exchange.status = 504 if timed_out else 502
        self._finish_stream(exchange)
        exchange.response_complete = True
        await send({
            "type": "http.response.body", "more_body": False,
            "body": state.drain() + self._error_event(
                exchange.status, f"the engine failed mid-stream: {exchange.error}",
                "engine_timeout" if timed_out else "engine_error"),
        })

    def _stream_sink(self, exchange: Exchange, state: StreamState, sender: CallbackSender,
                     interrupt: Callable[[BaseException], None]) -> Callable[[bytes], None]:
        feed = state.feed
        faulted = False

        def sink(data: bytes) -> None:
            nonlocal faulted
            if exchange.response_complete or faulted:
                return  # nothing follows [DONE] (or the engine's fault) on the client's side
            try:
                out, first_token = feed(data)
                if first_token:
                    exchange.ttft_s = time.perf_counter() - exchange.t0
                if state.done:
                    fault = self._take_stream_usage(exchange, state)
                    if fault is not None:
                        # Usage the engine cannot mean: what came before [DONE] goes out, then
                        # the error event in place of [DONE] (the row says why).
                        if out.endswith(_DONE_EVENT):
                            sender.push({"type": "http.response.body", "body": out[:-len(_DONE_EVENT)],
                                         "more_body": True})
                        raise fault
                    self._record(exchange)  # recorded before [DONE] reaches the client
                    # [DONE] and the end of the response leave in one write.
                    exchange.response_complete = True
                    sender.push({"type": "http.response.body", "body": out, "more_body": False})
                elif out:
                    sender.push({"type": "http.response.body", "body": out, "more_body": True})
            except EngineFault as exc:
                faulted = True
                interrupt(exc)  # deliver() raises it; what was pushed still reaches the client
            except Exception as exc:  # noqa: BLE001 - raised by deliver() in the relay's task, not into the parser
                sender.fail(exc)

        return sink

    def _take_stream_usage(self, exchange: Exchange, state: StreamState) -> UsageError | None:
        """Tokens and finish reason from what the stream carried; the fault if its usage is bad
        (then the running totals are billed if they are sound, else the tokens stay unknown)."""
        exchange.finish_reason = exchange.finish_reason or state.finish_reason
        try:
            usage = state.usage()
        except UsageError as exc:
            exchange.error = exchange.error or f"engine sent unusable usage: {exc}"
            try:
                usage = state.running_usage()
            except UsageError:
                usage = None
            if usage is not None:
                exchange.prompt_tokens, exchange.completion_tokens = usage
            return exc
        if usage is not None:
            exchange.prompt_tokens, exchange.completion_tokens = usage
        elif state.done:
            exchange.error = exchange.error or "the engine's stream carried no usage"  # tokens stay unknown
        return None

    def _finish_stream(self, exchange: Exchange) -> None:
        state = exchange.request.stream_state  # type: ignore[union-attr]
        if state is not None:
            self._take_stream_usage(exchange, state)
        self._record(exchange)

    # -- accounting ----------------------------------------------------------------------

    def _record(self, exchange: Exchange) -> None:
        if exchange.recorded:
            return
        request = exchange.request
        state = request.stream_state if request else None
        if state is not None and exchange.aborted:
            # The running totals vLLM sent before the abort, summed over choices and prompts.
            self._take_stream_usage(exchange, state)
        exchange.recorded = True
        extra = None if exchange.refused is None else {"refused": exchange.refused}
        if exchange.ticket is not None:
            self.limits.settle(exchange.ticket, exchange.key_id, exchange.prompt_tokens, exchange.completion_tokens)
            if (reservation := exchange.ticket.reservation) is not None:
                # What was held against the key's budgets and what replaced it, in whole micro-dollars:
                # the difference was released, not spent (`spot cost --by key`).
                extra = {"reserved_micro": round(reservation.worst_micro),
                         "settled_micro": round(reservation.cost(exchange.prompt_tokens, exchange.completion_tokens))}
        elapsed_s = time.perf_counter() - exchange.t0
        started_at = datetime.fromtimestamp(exchange.started_unix, UTC)
        model = request.model if request else ""
        node = exchange.node
        row = UsageRow(
            request_id=exchange.request_id,
            gateway_id=self.recorder.gateway_id,
            model=model,
            endpoint=request.endpoint if request else exchange.endpoint,
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
        if extra is not None:
            row.extra = extra  # type: ignore[attr-defined]  # vars(row) carries it to the spool, as JSON
        try:
            self.recorder.record(row)
        except Exception:  # noqa: BLE001 - the client still gets its answer; the log says which row
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
        if exchange.prompt_tokens is None or exchange.completion_tokens is None:
            metrics.unknown_usage.inc()
        if node is not None:
            metrics.upstream_latency.observe(elapsed_s)
        if exchange.ttft_s is not None:
            metrics.ttft.observe(exchange.ttft_s)

    async def _last_resort(self, exchange: Exchange, send: Any, exc: Exception) -> None:
        """Any exception on a request: an OpenAI-shaped error (502 if the engine's answer caused
        it, else 500), an error event if a stream had begun, a cut connection if a non-streamed
        body had; a row with the error; a metric. Never a bare 500 or a silent end."""
        engine = isinstance(exc, EngineFault) or exchange.engine_answered
        status, code, side = (502, "engine_error", "engine") if engine else (500, "gateway_error", "gateway")
        if isinstance(exc, EngineFault):
            log.warning("request %s: the engine's answer could not be relayed: %s", exchange.request_id, exc)
        else:  # our own code failed, on the engine's answer or before it: the traceback is needed
            log.error("request %s failed in the gateway", exchange.request_id, exc_info=exc)
        detail = str(exc)[:300] if isinstance(exc, EngineFault) else type(exc).__name__
        message = f"the engine's answer cannot be relayed: {detail}" if engine else f"gateway error ({detail})"
        self.metrics.failed(side)
        exchange.status = status
        exchange.error = exchange.error or message
        self._record(exchange)
        if exchange.response_complete:
            return
        exchange.response_complete = True
        if exchange.raw_body_started:
            return  # part of a JSON body is out: ending the response unfinished cuts the connection
        try:
            await self._send_error(send, GatewayError(status, message, code=code), exchange.request_id,
                                   headers_sent=exchange.headers_sent)
        except Exception:  # noqa: BLE001 - the client is gone; its row is written
            exchange.aborted = True

    def _error_event(self, status: int, message: str, code: str) -> bytes:
        """The event that ends a stream that failed (only on failures: not on the hot path)."""
        return stream_error_event(status, message, code)

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


_DONE_EVENT = b"data: [DONE]\n\n"


class _Utf8Check:
    """JSON is UTF-8: an answer that is not is the engine's fault, found as it passes."""

    __slots__ = ("_decoder",)

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")()

    def feed(self, chunk: bytes) -> None:
        try:
            self._decoder.decode(chunk)  # ASCII chunks are a quick pass; a split sequence carries over
        except UnicodeDecodeError:
            raise EngineFault("the engine's answer is not UTF-8") from None

    def end(self) -> None:
        try:
            self._decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise EngineFault("the engine's answer ends inside a UTF-8 sequence") from None


def _choices_per_prompt(body: bytes) -> tuple[int, bool]:
    """The request's ``n`` (choices per prompt), for summing an aborted stream's choices, and
    whether it was a JSON integer.

    vLLM's request models parse leniently: ``"2"`` and ``2.0`` are n=2 to it, so they are read
    the same way here (else an aborted stream's choices would be summed wrongly); since such a
    value is not a plain integer, the caller reads each chunk's choice index rather than trust it.
    Read only when the body holds the bytes ``"n"``: most requests do not, and so are not
    decoded a second time (``parse_request`` does not keep ``n``)."""
    try:
        n = json.loads(body).get("n")
    except (ValueError, RecursionError, AttributeError):
        return 1, False
    if n is None:
        return 1, True
    if type(n) is int:
        return max(n, 1), True
    lenient = 1
    if type(n) is float and n.is_integer():
        lenient = int(n)
    elif type(n) is str and n.strip().isdigit():
        lenient = int(n.strip())
    return max(lenient, 1), False


class _Reroute(Exception):
    """The chosen node could not be reached before any answer: try the request elsewhere once."""


async def _wait_for_disconnect(receive: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
