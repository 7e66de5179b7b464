"""uvicorn's httptools protocol with the limits a public listener needs before any auth runs.

httptools (llhttp) puts no bound on a request head: its Python wrapper concatenates a header's
bytes until the header ends, so 3 connections x 30 MB of headers without a key grew the gateway
by ~90 MB, and one header byte every 2 s held a connection forever. uvicorn's own bounds are
for h11 (``h11_max_incomplete_event_size``) or count tasks and connections together and answer
in plain text (``limit_concurrency``). This subclass adds, per connection:

- head bytes (``max_header_bytes``): past it, 431 and close. Counted per ``data_received``
  while a head is being read, so at most one socket read (uvloop: 256 KB) past the limit is
  ever buffered;
- head time (``header_timeout_s``, from the connection's start or the request's first byte to
  the end of its head): past it, 408 and close. Idle keep-alive connections are uvicorn's
  ``timeout_keep_alive``;
- open connections (``max_connections``): a connection past it is still read (within the two
  limits above, its head time cut to 1 s), then its request is answered 503 + Retry-After with
  ``connection: close``, OpenAI-shaped, so SDKs back off and retry rather than seeing a reset;
- pipelined requests (``MAX_PIPELINED``): more than 16 waiting behind the one being answered
  close the connection (uvicorn queues every request of a read, unbounded);
- the parser's own 400s ("Invalid HTTP request") as OpenAI-shaped JSON.

Per request this costs a timer armed and cancelled (``call_later``: ~1 us) and one attribute
test per socket read; nothing per response chunk.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .errors import error_body

# After an error reply the connection is read and dropped for this long, or this many bytes, so
# that the client reads the reply instead of a reset; then closed.
CLOSE_GRACE_S = 1.0
CLOSE_GRACE_BYTES = 256 * 1024
RETRY_AFTER_S = 1
OVER_LIMIT_HEAD_TIMEOUT_S = 1.0  # the head time allowed to a connection past max_connections
MAX_PIPELINED = 16  # requests waiting behind the one being answered on one connection

_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


@dataclass(frozen=True)
class ClientLimits:
    """What one connection may cost before its request reaches the app (GatewaySettings)."""

    max_header_bytes: int = 64 * 1024
    header_timeout_s: float = 10.0
    max_connections: int = 1024


_last: tuple[Any, ClientLimits] | None = None  # (app, its limits): one app per server process


def limits_of(app: Any) -> ClientLimits:
    """The limits the app carries (``GatewayApp.client_limits``), looking through wrappers;
    looked up once per app, not per connection."""
    global _last
    if _last is not None and _last[0] is app:
        return _last[1]
    limits = _find_limits(app)
    _last = (app, limits)
    return limits


def _find_limits(app: Any) -> ClientLimits:
    for _ in range(4):
        limits = getattr(app, "client_limits", None)
        if isinstance(limits, ClientLimits):
            return limits
        app = getattr(app, "app", None)
    return ClientLimits()


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = limits_of(self.app)
        self._max_head_bytes = limits.max_header_bytes
        self._head_timeout_s = limits.header_timeout_s
        self._max_connections = limits.max_connections
        self._head_bytes = 0
        self._reading_head = True
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False  # an error reply went out: what follows is read and dropped
        self._grace_bytes = CLOSE_GRACE_BYTES

    # -- connection --------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._max_connections:
            self.app = _over_connection_limit  # this connection's requests: 503, then close
            # A client sends its request as soon as it connects; one that does not, while the
            # gateway is full, holds a file descriptor for nothing.
            self._head_timeout_s = min(self._head_timeout_s, OVER_LIMIT_HEAD_TIMEOUT_S)
        self._head_timer = self.loop.call_later(self._head_timeout_s, self._head_too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            self._grace_bytes -= len(data)
            if self._grace_bytes < 0:
                self.transport.close()
            return
        if not self._reading_head:
            super().data_received(data)
            return
        self._head_bytes += len(data)
        super().data_received(data)
        if self._reading_head and self._head_bytes > self._max_head_bytes and not self._refused:
            self._refuse(431, f"request headers are larger than the gateway's limit of {self._max_head_bytes} bytes "
                              "(gateway.max_header_bytes)", "request_header_fields_too_large")

    # -- parser callbacks --------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self._head_timeout_s, self._head_too_slow)

    def on_headers_complete(self) -> None:
        if self._refused:
            return  # the rest of a read that is being dropped: no request is started from it
        if len(self.pipeline) >= MAX_PIPELINED:
            # httptools parses a whole read at once: 256 KB of pipelined one-line requests, never
            # read back, queued ~14,000 requests per connection (3 connections: +450 MB, /health
            # 1.9 s). Those waiting are dropped and the connection closed.
            self.pipeline.clear()
            self._refused = True
            self.transport.close()
            return
        self._reading_head = False
        if self._head_bytes > self._max_head_bytes and self._head_size() > self._max_head_bytes:
            # The whole head came in the read that completed it (what was read may include body
            # bytes, hence the exact count, paid only here). The connection's requests get 431.
            self.app = _head_too_large
        self._head_bytes = 0
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_head = True  # the next bytes on this connection are the next request's head

    def _head_size(self) -> int:
        """The head's bytes as parsed: request target, names and values, and their separators."""
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def on_response_complete(self) -> None:
        cycle = self.cycle
        super().on_response_complete()
        if cycle is not None and cycle.more_body and not self._refused:
            # Answered before its body was read (401 without a key, 413, 404): uvicorn would
            # keep reading and dropping the rest for as long as it trickles in, each byte
            # re-arming nothing, so a client without a key could hold the connection forever.
            self._unset_keepalive_if_required()
            self._linger_then_close()

    # -- refusals ----------------------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, f"the request is not valid HTTP/1.1 ({msg.rstrip('.')})", "invalid_http")

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self._refused:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a pipelined head dribbling in while an answer streams out
            return
        self._refuse(408, f"request headers did not arrive within {self._head_timeout_s:g} s "
                          "(gateway.header_timeout_s)", "request_timeout")

    def _refuse(self, status: int, message: str, code: str) -> None:
        """Answer ``status`` and close: the reply goes out, the write side is shut, and whatever
        the client still sends is dropped for CLOSE_GRACE_S, so that it reads the reply instead
        of a reset."""
        self._refused = True
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self.transport.is_closing():
            return
        body = error_body(status, message, code=code)
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
            % (status, _REASONS[status], len(body), body)
        )
        self._linger_then_close()

    def _linger_then_close(self) -> None:
        """Shut the write side after the reply, drop what the client still sends (up to
        CLOSE_GRACE_BYTES), and close after CLOSE_GRACE_S at most: the client reads the reply
        instead of a reset, and cannot keep the connection."""
        self._refused = True
        if self.transport.is_closing():
            return
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(CLOSE_GRACE_S, self.transport.close)


async def _head_too_large(scope: Any, receive: Any, send: Any) -> None:
    """The app a request whose head arrived whole but past ``max_header_bytes`` gets: 431, close."""
    body = error_body(431, "request headers are larger than the gateway's limit (gateway.max_header_bytes)",
                      code="request_header_fields_too_large")
    await send({"type": "http.response.start", "status": 431, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


_OVER_LIMIT_BODY = error_body(503, "the gateway has too many open connections (gateway.max_connections); retry shortly",
                              code="too_many_connections")


async def _over_connection_limit(scope: Any, receive: Any, send: Any) -> None:
    """The app a connection past ``max_connections`` gets: 503, OpenAI-shaped, and close."""
    await send({"type": "http.response.start", "status": 503, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(_OVER_LIMIT_BODY)).encode()),
        (b"retry-after", str(RETRY_AFTER_S).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": _OVER_LIMIT_BODY})
