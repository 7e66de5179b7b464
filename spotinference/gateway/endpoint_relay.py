"""The relay for every route but chat and completions (``endpoints.py``): the same auth, budget
gate, wake-on-request hold, limits, errors and one usage row per request as chat, with each
endpoint's own request body, stream and usage names.

A subclass, so that nothing here runs on chat's hot path (``Relay.handle``). Responses-API
requests that name a stored response (``GET``/``cancel``/``previous_response_id``) go to the node
that served it (``response_homes.py``); vLLM keeps a response in that engine's memory only.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

from .endpoint_requests import EndpointRequest, parse_endpoint_request
from .endpoints import RESPONSES, Endpoint, Usage
from .errors import GatewayError, anthropic_error_body
from .event_stream import messages_usage, pooling_usage, responses_usage
from .key_access import model_route
from .relay import RETRY_AFTER_S, Exchange, Relay
from .requests import ClientGone, header, read_body
from .response_homes import ResponseHome, ResponseHomes
from .routing import Node, Route
from .sse import UsageError, parse_usage
from .upstream import UpstreamResponse, encode_headers
from .usage import BodyUsage, UsageRecorder, UsageRow

log = logging.getLogger(__name__)

_RESPONSE_ID = re.compile(rb'"id":\s*"([^"\\]{1,256})"')


class PinnedRoute(Route):
    """A route whose request must go to one node (the one holding a stored response)."""

    def __init__(self, route: Route, node: Node) -> None:
        super().__init__(route.model, route.tier, [node], route.controller)

    def acquire(self) -> Node | None:
        node = self.nodes[0]
        node.in_flight += 1
        return node


class _ExtraRecorder(UsageRecorder):
    """Adds what an endpoint reports beyond tokens (audio seconds) to its row's ``extra``."""

    def __init__(self, inner: UsageRecorder) -> None:
        self.inner = inner
        self.writer = inner.writer
        self.gateway_id = inner.gateway_id
        self.extras: dict[str, dict[str, Any]] = {}

    def record(self, row: UsageRow) -> None:
        extra = self.extras.pop(row.request_id, None)
        if extra is not None:
            row.extra = {**getattr(row, "extra", {}), **extra}  # type: ignore[attr-defined]  # to the spool, as JSON
        self.inner.record(row)


class _SniffFirstChunk:
    """An upstream response whose first body bytes are also handed to ``seen`` (a non-streamed
    Responses answer starts with its id)."""

    def __init__(self, upstream: UpstreamResponse, seen: Any) -> None:
        self._upstream = upstream
        self._seen = seen

    def __getattr__(self, name: str) -> Any:
        return getattr(self._upstream, name)

    async def next_chunk(self) -> bytes:
        chunk = await self._upstream.next_chunk()
        if self._seen is not None and chunk:
            self._seen(chunk)
            self._seen = None
        return chunk


class EndpointRelay(Relay):
    def __init__(self, *args: Any, homes: ResponseHomes, anthropic: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.homes = homes
        self.anthropic = anthropic  # errors in Anthropic's shape
        self.recorder = _ExtraRecorder(self.recorder)

    async def handle_endpoint(self, scope: dict[str, Any], receive: Any, send: Any, spec: Endpoint,
                              response_id: str | None) -> None:
        exchange = Exchange(self._next_request_id(), time.time(), time.perf_counter())
        exchange.endpoint = spec.name  # type: ignore[attr-defined]
        if scope["method"] != spec.method:
            # As chat's 405 (app._post_only): before the key, and no row: nothing was asked of an engine.
            error = GatewayError(405, f"{scope['method']} is not allowed on {spec.name}: use {spec.method}",
                                 code="method_not_allowed", allow=spec.method)
            await self._send_error(send, error, exchange.request_id)
            return
        try:
            exchange.key_id = self.authenticate(scope)
        except GatewayError as exc:
            await self._refuse_unauthenticated(exchange, exc, send)
            return
        try:
            body = await read_body(scope, receive, self.max_body_bytes)
            try:
                request = parse_endpoint_request(
                    spec, body, content_type=header(scope, b"content-type"), path=scope["path"],
                    query=scope.get("query_string", b""), response_id=response_id)
            except GatewayError:
                raise
            except Exception as exc:  # noqa: BLE001 - the client's bytes broke the parser: its fault, a 400
                log.warning("request %s could not be parsed: %r", exchange.request_id, exc)
                raise GatewayError(400, f"request body could not be read ({type(exc).__name__})",
                                   code="invalid_request") from None
            exchange.request = request
            route = self._route_for(exchange, request)
            if self.gate is not None and not self.gate.state.open:
                state = self.gate.state
                raise GatewayError(state.http_status or 503, state.message, code=state.reason,
                                   retry_after_s=state.retry_after_s or RETRY_AFTER_S)
            if route.controller is None and not route.nodes:
                raise GatewayError(
                    503, f"no engine is serving tier '{route.tier}' for model '{route.model}' right now",
                    code="no_serving_node", retry_after_s=RETRY_AFTER_S)
            if self.limits is not None and (ticket := self.limits.admit(exchange.key_id, exchange.request, route.tier)) is not None:
                exchange.ticket, send = ticket, ticket.wrap(send)  # the last check: 429 past the key's limits
        except ClientGone:
            return
        except GatewayError as exc:
            exchange.status, exchange.error = exc.status, exc.message
            self._note_refusal(exchange, exc)
            if exc.status == 400:
                self.metrics.failed("client")
            self._record(exchange)
            await self._send_error(send, exc, exchange.request_id)
            return
        except Exception as exc:  # noqa: BLE001 - the last resort before the engine: never a bare 500
            await self._last_resort(exchange, send, exc)
            return
        await self._relay_watching_client(exchange, route, receive, send)

    def _route_for(self, exchange: Exchange, request: EndpointRequest) -> Route:
        if request.response_id is not None:
            return self._route_to_response(exchange, request, request.response_id)
        return model_route(self.router, self.keys, exchange.key_id, request.model)

    def _route_to_response(self, exchange: Exchange, request: EndpointRequest, response_id: str) -> Route:
        param = "previous_response_id" if request.spec is RESPONSES else "response_id"
        home = self.homes.find(response_id)
        if home is None or (self.keys is not None and home.key_id != exchange.key_id):
            # Another key's response is not named as existing: ids would otherwise leak.
            raise GatewayError(404, f"No response with id '{response_id}' was served through this gateway for "
                                    "this API key", param=param, code="response_not_found")
        if not request.model:
            request.model = home.model  # GET and cancel name no model: the response's
        route = self.router.route(home.model)
        if route is not None:
            model_route(self.router, self.keys, exchange.key_id, home.model)  # the key's models allowlist
        node = next((n for n in route.nodes if n.base_url == home.base_url), None) if route else None
        if route is None or node is None:
            raise GatewayError(
                404, f"Response '{response_id}' was served by node '{home.node}' of tier '{home.tier}', which is "
                     "no longer serving: vLLM keeps a response only in that engine's memory, so it is gone with it",
                param=param, code="response_node_gone")
        return PinnedRoute(route, node)

    # -- the engine ----------------------------------------------------------------------------

    async def _exchange(self, exchange: Exchange, send: Any) -> None:
        request = exchange.request
        node = exchange.node
        assert isinstance(request, EndpointRequest) and node is not None and request.spec is not None
        if request.content_type == b"application/json":
            fixed = self._node_headers(node)
        else:
            fixed = encode_headers([("Content-Type", request.content_type.decode("latin-1")),
                                    *([("Authorization", node.authorization)] if node.authorization else [])])
        headers = b"%sX-Request-Id: %s\r\n" % (fixed, exchange.request_id.encode())
        exchange.prompt_tokens = exchange.completion_tokens = None
        upstream: Any = await self.pool(node).request(request.method, request.upstream_path, request.upstream_body,
                                                      headers)
        exchange.engine_answered = True
        try:
            if request.stream and upstream.status == 200:
                await self._relay_stream(exchange, upstream, send)
            else:
                if request.spec is RESPONSES and upstream.status == 200:
                    upstream = _SniffFirstChunk(upstream, lambda chunk: self._take_response_id(exchange, chunk))
                await self._relay_whole(exchange, upstream, send)
        finally:
            upstream.close()

    @staticmethod
    def _take_response_id(exchange: Exchange, chunk: bytes) -> None:
        found = _RESPONSE_ID.search(chunk, 0, 512)
        if found is not None:
            exchange.response_id = found.group(1).decode("utf-8", "replace")  # type: ignore[attr-defined]

    def _take_body_usage(self, exchange: Exchange, found: BodyUsage) -> None:
        request = exchange.request
        assert isinstance(request, EndpointRequest) and request.spec is not None
        kind = request.spec.usage
        if kind is Usage.NONE:
            exchange.prompt_tokens = exchange.completion_tokens = 0  # no inference ran
            return
        if found.usage is None:
            exchange.error = "the engine's answer carried no usage" + (" (oversized)" if found.oversized else "")
            return
        try:
            usage = json.loads(found.usage)
        except (ValueError, RecursionError) as exc:
            raise UsageError(f"usage is not JSON ({type(exc).__name__})") from None
        if kind is Usage.RESPONSES:
            exchange.prompt_tokens, exchange.completion_tokens = responses_usage(usage)
        elif kind is Usage.MESSAGES:
            exchange.prompt_tokens, exchange.completion_tokens = messages_usage(usage)
        elif kind is Usage.POOLING:
            exchange.prompt_tokens, exchange.completion_tokens = pooling_usage(usage), 0
        elif isinstance(usage, dict) and usage.get("type") == "duration":
            seconds = usage.get("seconds")
            if type(seconds) is not int or seconds < 0:
                raise UsageError(f"usage.seconds is {repr(seconds)[:40]}: expected a whole number of seconds")
            self.recorder.extras[exchange.request_id] = {"audio_seconds": seconds}  # type: ignore[attr-defined]
            exchange.error = "vLLM reports audio by duration, not tokens"  # tokens stay unknown (NULL)
        else:
            exchange.prompt_tokens, exchange.completion_tokens = parse_usage(found.usage)

    # -- accounting ----------------------------------------------------------------------------

    def _record(self, exchange: Exchange) -> None:
        if exchange.recorded:
            return
        super()._record(exchange)
        request = exchange.request
        if not isinstance(request, EndpointRequest) or request.spec is not RESPONSES or exchange.status != 200:
            return
        state = request.stream_state
        response_id = getattr(state, "response_id", None) or getattr(exchange, "response_id", None)
        node = exchange.node
        if response_id and node is not None:
            self.homes.remember(ResponseHome(response_id, request.model, node.tier, node.name, node.base_url,
                                             exchange.key_id, exchange.started_unix))

    def _error_event(self, status: int, message: str, code: str) -> bytes:
        if not self.anthropic:
            return super()._error_event(status, message, code)
        return b"event: error\ndata: " + anthropic_error_body(status, message) + b"\n\n"

    async def _send_error(self, send: Any, error: GatewayError, request_id: str, *, headers_sent: bool = False) -> None:
        if not self.anthropic:
            await super()._send_error(send, error, request_id, headers_sent=headers_sent)
            return
        body = anthropic_error_body(error.status, error.message)
        if headers_sent:
            await send({"type": "http.response.body", "body": self._error_event(error.status, error.message, ""),
                        "more_body": False})
            return
        await send({"type": "http.response.start", "status": error.status,
                    "headers": [*error.headers(), (b"x-request-id", request_id.encode())]})
        await send({"type": "http.response.body", "body": body, "more_body": False})
