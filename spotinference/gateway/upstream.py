"""The relay's upstream client: HTTP/1.1 keep-alive connections to one engine, nothing more.

The hot path needs four things from a client: write a request, learn the status, hand over body
bytes the moment they arrive, and know whether the connection can be reused. A general client
does much more per request and per chunk (URL objects, header multidicts, stream readers, cookie
and redirect machinery), and on these 2-core machines that work is the gateway's added latency
(tests/benchmarks/gateway_overhead.py). Here a request is one ``write``, the response is parsed
by httptools (llhttp, in C, as uvicorn parses requests), and body bytes go straight from
``data_received`` into the response's buffer, or (``deliver``) into the relay's own callback.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from urllib.parse import urlsplit

import httptools

# Past this much unread body the engine's socket stops being read (TCP back-pressure), so a
# slow client cannot make the gateway buffer a whole long completion.
READ_HIGH_WATER = 256 * 1024


class UpstreamError(Exception):
    """The engine could not be asked, or did not answer properly."""


class UpstreamConnectError(UpstreamError):
    """No connection could be opened (refused, unreachable, timed out): nothing was sent."""


class UpstreamClosedError(UpstreamError):
    """The engine closed the connection before the response was complete."""

    def __init__(self, message: str, *, before_response: bool) -> None:
        super().__init__(message)
        # Nothing of an answer arrived: on a reused keep-alive connection this is the engine
        # having closed it while idle, and the request is safe to send again.
        self.before_response = before_response


class UpstreamProtocolError(UpstreamError):
    """The engine's answer was not valid HTTP/1.1."""


class UpstreamResponse:
    """One response: status and headers once they arrive, then the body as it arrives."""

    __slots__ = ("status", "headers", "_conn", "_buffer", "_buffered", "_waiter", "_complete", "_error", "_released",
                 "_sink")

    def __init__(self, conn: _Connection) -> None:
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self._conn = conn
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._complete = False
        self._error: BaseException | None = None  # an UpstreamError, or what interrupt() was given
        self._released = False
        self._sink: Callable[[bytes], None] | None = None

    def header(self, name: bytes, default: bytes = b"") -> bytes:
        """A header's value by lower-case name."""
        return self.headers.get(name, default)

    @property
    def complete(self) -> bool:
        return self._complete

    async def next_chunk(self) -> bytes:
        """All body bytes received since the last call, waiting if there are none; b"" at the end."""
        while True:
            if self._buffer:
                buffer = self._buffer
                data = buffer[0] if len(buffer) == 1 else b"".join(buffer)
                buffer.clear()
                if self._buffered > READ_HIGH_WATER:
                    self._conn.resume_reading()
                self._buffered = 0
                return data
            if self._error is not None:
                raise self._error
            if self._complete:
                self._release()
                return b""
            self._waiter = self._conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def deliver(self, sink: Callable[[bytes], None]) -> None:
        """Hand body bytes to ``sink`` as they arrive, from inside the connection's read callback.

        No task wakes per chunk, so a chunk read from the engine can leave for the client in the
        same turn of the event loop, as in nginx; a task hop per chunk was the relay's largest
        cost at 64 streams. Returns at the end of the body, raises the UpstreamError that ended
        it early, or the error given to ``interrupt``. ``sink`` must not raise (it runs inside
        the HTTP parser's callback); it may call ``pause_reading`` to apply back-pressure."""
        if self._buffer:
            data = b"".join(self._buffer)
            self._buffer.clear()
            self._buffered = 0
            sink(data)
        self._sink = sink
        try:
            while self._error is None and not self._complete:
                self._waiter = self._conn.loop.create_future()
                await self._waiter
        finally:
            self._sink = None
            self._waiter = None
        if self._error is not None:
            raise self._error
        self._release()

    def interrupt(self, error: BaseException) -> None:
        """Stop ``deliver``: it raises ``error``. Reading stops; close() then drops the connection."""
        self._conn.pause_reading()
        if self._error is None and not self._complete:
            self._error = error
            self._wake()

    def pause_reading(self) -> None:
        self._conn.pause_reading()

    def resume_reading(self) -> None:
        self._conn.resume_reading()

    async def read(self) -> bytes:
        """The whole body."""
        parts = []
        while chunk := await self.next_chunk():
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        """Done with this response. Unless it was read to the end, the connection is closed, which
        is what tells vLLM to abort the request and stop generating."""
        if not self._released:
            self._released = True
            if self._complete and self._error is None:
                self._conn.release()
            else:
                self._conn.abandon()

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self._conn.release()

    # -- called by the connection ------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _feed(self, data: bytes) -> None:
        sink = self._sink
        if sink is not None:
            sink(data)
            return
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered > READ_HIGH_WATER:
            self._conn.pause_reading()
        self._wake()

    def _finish(self) -> None:
        self._complete = True
        self._wake()

    def _fail(self, error: UpstreamError) -> None:
        if self._error is None and not self._complete:
            self._error = error
            self._wake()


class _Connection(asyncio.Protocol):
    """One keep-alive connection; at most one request on it at a time."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: UpstreamResponse | None = None
        self.headers_waiter: asyncio.Future[None] | None = None
        self.idle_since = 0.0
        self.closed = False
        self.reusable = False
        self.paused = False
        self.served = 0  # requests sent on this connection

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.response is None:
            self.abandon()  # bytes nobody asked for: this connection cannot be trusted again
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamProtocolError(f"invalid HTTP from the engine: {exc}"))
            self.abandon()

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        response = self.response
        if response is None or response.complete:
            return
        if response.status and self._reads_until_close():
            response._finish()  # an answer without length or chunking ends when the connection does
            return
        before = response.status == 0
        reason = f": {exc}" if exc else ""
        self._fail(UpstreamClosedError(
            f"the engine closed the connection {'before answering' if before else 'mid-response'}{reason}",
            before_response=before,
        ))

    # -- httptools callbacks ---------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.response.headers  # type: ignore[union-attr]
        name = name.lower()
        headers[name] = headers[name] + b", " + value if name in headers else value

    def on_headers_complete(self) -> None:
        response = self.response
        assert response is not None
        response.status = self.parser.get_status_code()
        waiter = self.headers_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_body(self, body: bytes) -> None:
        response = self.response
        sink = response._sink  # type: ignore[union-attr]
        if sink is not None:
            sink(body)  # per chunk of every stream: straight to the relay, no further call
        else:
            response._feed(body)  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        self.reusable = self.parser.should_keep_alive()
        self.response._finish()  # type: ignore[union-attr]

    # -- used by the pool and the response -------------------------------------------------

    async def send(self, head: bytes, body: bytes) -> UpstreamResponse:
        response = self.response = UpstreamResponse(self)
        self.reusable = False
        self.served += 1
        waiter = self.headers_waiter = self.loop.create_future()
        transport = self.transport
        assert transport is not None
        if len(body) < 65536:
            transport.write(head + body)  # one segment for the usual small JSON body
        else:
            transport.writelines((head, body))
        try:
            await waiter  # set by on_headers_complete, or by a failure
        except BaseException:
            self.abandon()  # cancelled (the client left): closing is what makes vLLM abort
            raise
        finally:
            self.headers_waiter = None
        if response.status == 0:
            self.abandon()
            raise response._error or UpstreamClosedError("the engine did not answer", before_response=True)
        return response

    def _fail(self, error: UpstreamError) -> None:
        response = self.response
        if response is None:
            return
        response._fail(error)
        waiter = self.headers_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _reads_until_close(self) -> bool:
        headers = self.response.headers if self.response else {}
        return b"content-length" not in headers and b"chunked" not in headers.get(b"transfer-encoding", b"").lower()

    def pause_reading(self) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def release(self) -> None:
        """The response was read to its end: back to the pool if the engine keeps it alive."""
        self.response = None
        self.resume_reading()
        if self.reusable and not self.closed:
            self.idle_since = time.monotonic()
            self.pool.park(self)
        else:
            self.abandon()

    def abandon(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.close()


def encode_headers(headers: list[tuple[str, str]]) -> bytes:
    """Header lines for ``UpstreamPool.request``; refuses what would break the request's framing."""
    lines = []
    for name, value in headers:
        if any(c in name + value for c in "\r\n\0") or ":" in name or not name:
            raise ValueError(f"header {name!r} cannot be sent: names and values must be single-line")
        lines.append(f"{name}: {value}\r\n".encode("latin-1"))
    return b"".join(lines)


class UpstreamPool:
    """Keep-alive connections to one engine (``http://host:port``), opened as needed, unbounded."""

    def __init__(self, base_url: str, *, connect_timeout_s: float, idle_timeout_s: float = 4.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"engine URL must be http://host[:port], got {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.base_path = parts.path.rstrip("/")
        self.host_header = parts.netloc.encode("idna")
        self.connect_timeout_s = connect_timeout_s
        # Idle connections are dropped before uvicorn's 5 s keep-alive timeout (vLLM's server)
        # would close them under us.
        self.idle_timeout_s = idle_timeout_s
        self.loop = asyncio.get_running_loop()
        self._idle: deque[_Connection] = deque()
        self._starts: dict[tuple[str, str], bytes] = {}  # request line and Host, per method and path
        self._closed = False

    async def request(self, method: str, path: str, body: bytes, headers: bytes = b"") -> UpstreamResponse:
        """Send one request; return once the status and headers have arrived.

        ``headers`` are ready-encoded ``Name: value\r\n`` lines (see ``encode_headers``): the
        relay encodes a node's fixed headers once, not per request. A reused connection the
        engine closed while it sat idle is replaced once, transparently (nothing was answered,
        so the engine never saw the request)."""
        head = self._head(method, path, headers, len(body))
        conn = self._take_idle()
        if conn is not None:
            try:
                return await conn.send(head, body)
            except UpstreamClosedError as exc:
                if not exc.before_response:
                    raise
        conn = await self._connect()
        return await conn.send(head, body)

    def _head(self, method: str, path: str, headers: bytes, length: int) -> bytes:
        start = self._starts.get((method, path))
        if start is None:
            start = self._starts[(method, path)] = (
                f"{method} {self.base_path}{path} HTTP/1.1\r\n".encode() + b"Host: " + self.host_header + b"\r\n")
        return b"%s%sContent-Length: %d\r\n\r\n" % (start, headers, length)

    def _take_idle(self) -> _Connection | None:
        idle = self._idle
        deadline = time.monotonic() - self.idle_timeout_s
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to have been closed
            if conn.closed or conn.transport is None or conn.transport.is_closing():
                continue
            if conn.idle_since < deadline:
                conn.abandon()
                continue
            return conn
        return None

    async def _connect(self) -> _Connection:
        if self._closed:
            raise UpstreamConnectError("the upstream pool is closed")
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(lambda: _Connection(self), self.host, self.port),
                self.connect_timeout_s,
            )
        except TimeoutError:
            raise UpstreamConnectError(
                f"connecting to {self.host}:{self.port} timed out after {self.connect_timeout_s} s") from None
        except OSError as exc:
            raise UpstreamConnectError(f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}") from None
        return conn

    def park(self, conn: _Connection) -> None:
        if self._closed:
            conn.abandon()
        else:
            self._idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        try:
            self._idle.remove(conn)
        except ValueError:
            pass

    @property
    def idle_connections(self) -> int:
        return sum(1 for conn in self._idle if not conn.closed)

    async def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().abandon()
