"""The relay's upstream client: HTTP/1.1 keep-alive connections to one engine, nothing more.

The hot path needs four things from a client: write a request, learn the status, hand over body
bytes the moment they arrive, and know whether the connection can be reused. A general client
does much more per request and per chunk (URL objects, header multidicts, stream readers, cookie
and redirect machinery), and on these 2-core machines that work is the gateway's added latency
(tests/benchmarks/gateway_overhead.py). Here a request is one ``write``, the response is parsed
by httptools (llhttp, in C, as uvicorn parses requests), and body bytes go straight from
``data_received`` into the response's buffer, or (``deliver``) into the relay's own callback.
Measured with the same minimal relay on these machines (shared/reference/gateway-performance.md):
httpx's streaming client added 3-68 ms at P95 for one stream and saturated at 64 streams,
aiohttp's about 1 ms and 12-20 ms at P95 for 64; this client is what brought the gateway to
0.56 / 0.69 ms at one stream and 1.5 / 2.9 ms at 64. Writing our own HTTP client is paid for by
tests/test_upstream_conformance.py: hostile byte sequences against it, and its verdicts compared
with h11's (a maintained pure-Python parser) on generated responses.

Connection hygiene, because a connection that is reused carries the next client's answer:

* A connection goes back to the pool only when its response was complete and well-formed, all of
  its body was taken, and (for ``deliver``) the relay's send to its client finished: ``close()``
  is the only way back, and a finished response's ``pause_reading``/``resume_reading`` no longer
  touch the connection.
* Interim responses (1xx other than 101) are skipped, as RFC 9110 section 15.2 requires of every
  client; at most ``MAX_INTERIM`` of them. A 101 was never asked for: protocol error.
* Any byte the engine sends that is not part of the answer being awaited (a second response
  after the final one, bytes on an idle connection, garbage after the body) closes the
  connection and is delivered to no one. The one exception is llhttp skipping empty lines (CR,
  LF) between messages; they carry nothing that could reach a client.
* Response heads are capped at ``MAX_HEAD_BYTES``; trailers are read and ignored.

Encoding: requests say ``Accept-Encoding: identity``. An engine that compresses anyway (gzip or
deflate) is decoded here, so that the relay counts usage in, and the client gets, plain bytes;
the relay never passes ``Content-Encoding`` on. Other codings are a protocol error (502).

Retry rule: a request is sent again (once, on a fresh connection) only when the engine provably
never received it: the reused idle connection was found closed by the engine (EOF, or bytes
nobody asked for) before our request was written. Once any byte of a request is written, a close
before the answer is ambiguous (the engine may have run it, unbilled) and is an error with
``request_unseen = False``; a connect failure is ``request_unseen = True`` (the relay may send
the request to another node).

Timeouts (``UpstreamTimeoutError``): connect; read, the longest silence from the engine while an
answer is owed (not counted while the client's back-pressure has paused reading); total, from the
request's write to the answer's last byte. One timer per request, re-armed only when it fires;
a read costs one timestamp store.
"""

from __future__ import annotations

import asyncio
import socket
import time
import zlib
from collections import deque
from collections.abc import Callable
from urllib.parse import urlsplit

import httptools

# Past this much unread body the engine's socket stops being read (TCP back-pressure), so a
# slow client cannot make the gateway buffer a whole long completion.
READ_HIGH_WATER = 256 * 1024
# An engine's response head (status line, headers, any interim responses before it).
MAX_HEAD_BYTES = 64 * 1024
MAX_INTERIM = 8
# Decoded output per step when an engine compressed its answer: a small compressed body cannot
# become one huge allocation.
_INFLATE_STEP = 1 << 20
_DECODABLE = frozenset({b"gzip", b"x-gzip", b"deflate"})


class UpstreamError(Exception):
    """The engine could not be asked, or did not answer properly.

    ``request_unseen`` is True only when the engine provably never received the request, so it
    can be sent elsewhere without running twice."""

    request_unseen = False


class UpstreamConnectError(UpstreamError):
    """No connection could be opened (refused, unreachable): nothing was sent."""

    request_unseen = True


class UpstreamTimeoutError(UpstreamError):
    """The engine took longer than a configured timeout (connect, read or total)."""


class UpstreamConnectTimeoutError(UpstreamConnectError, UpstreamTimeoutError):
    """Opening the connection took longer than the connect timeout: nothing was sent."""


class UpstreamClosedError(UpstreamError):
    """The engine closed the connection before the response was complete."""

    def __init__(self, message: str, *, before_response: bool, request_unseen: bool = False) -> None:
        super().__init__(message)
        self.before_response = before_response  # no byte of an answer had arrived
        self.request_unseen = request_unseen  # ... and our request was never written


class UpstreamProtocolError(UpstreamError):
    """The engine's answer was not valid HTTP/1.1 (or not one we asked for)."""


class _Unexpected(Exception):
    """Raised inside the parser: a message began after the final response."""


class UpstreamResponse:
    """One response: status and headers once they arrive, then the body as it arrives."""

    __slots__ = ("status", "headers", "_conn", "_buffer", "_buffered", "_waiter", "_complete", "_error", "_released",
                 "_sink", "_inflate", "_sink_plain")

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
        self._inflate: zlib._Decompress | None = None  # the engine compressed its answer anyway
        self._sink_plain: Callable[[bytes], None] | None = None  # deliver's sink, when _sink decodes first

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
                self._release()  # read to the end, nothing buffered: nothing of it can reach anyone else
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
        the HTTP parser's callback); it may call ``pause_reading`` to apply back-pressure.
        The connection is not reused until ``close()``: call it once the sink's sends finished."""
        if self._buffer:  # what arrived before (already decoded)
            data = b"".join(self._buffer)
            self._buffer.clear()
            self._buffered = 0
            sink(data)
        if self._inflate is None:
            self._sink = sink
        else:
            self._sink_plain = sink
            self._sink = self._decoding(sink)
        try:
            while self._error is None and not self._complete:
                self._waiter = self._conn.loop.create_future()
                await self._waiter
        finally:
            self._sink = self._sink_plain = None
            self._waiter = None
        if self._error is not None:
            raise self._error

    def interrupt(self, error: BaseException) -> None:
        """Stop ``deliver``: it raises ``error``. Reading stops; close() then drops the connection."""
        if self._released:
            return
        self._conn.pause_reading()
        if self._error is None and not self._complete:
            self._error = error
            self._wake()

    def pause_reading(self) -> None:
        if not self._released:  # a finished response must not touch the connection's next request
            self._conn.pause_reading()

    def resume_reading(self) -> None:
        if not self._released:
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
            if self._complete and self._error is None and not self._buffer:
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
        if self._inflate is not None:
            data = self._decode(data)
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered > READ_HIGH_WATER:
            self._conn.pause_reading()
        self._wake()

    def _decoding(self, sink: Callable[[bytes], None]) -> Callable[[bytes], None]:
        decode = self._decode

        def decoded(data: bytes) -> None:
            out = decode(data)
            if out:
                sink(out)

        return decoded

    def _decode(self, data: bytes) -> bytes:
        inflate = self._inflate
        assert inflate is not None
        try:
            out = inflate.decompress(data, _INFLATE_STEP)
            if not inflate.unconsumed_tail:
                return out
            parts = [out]
            while inflate.unconsumed_tail:
                parts.append(inflate.decompress(inflate.unconsumed_tail, _INFLATE_STEP))
            return b"".join(parts)
        except zlib.error as exc:
            raise UpstreamProtocolError(f"the engine's compressed body does not decode: {exc}") from None

    def _finish(self) -> None:
        inflate = self._inflate
        if inflate is not None:
            tail = self._decode(b"") + inflate.flush()
            if tail:
                sink = self._sink_plain
                if sink is not None:
                    sink(tail)
                else:
                    self._buffer.append(tail)
                    self._buffered += len(tail)
            if not inflate.eof:
                raise UpstreamProtocolError("the engine's compressed body ends before its compressed stream does")
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
        self.in_head = False  # reading a response head (interim responses included)
        self.final = False  # the final (non-1xx) response's head has arrived
        self.head_bytes = 0  # bytes read while the head was incomplete: bounds one endless header
        self.header_bytes = 0  # header names and values: bounds a head that arrives in one read
        self.interim = 0
        self.last_read = 0.0  # loop time of the last bytes from the engine
        self.started = 0.0  # loop time the request was written
        self.timer: asyncio.TimerHandle | None = None
        self.fd = -1
        self.batch: bytes | list[bytes] | None = None  # body chunks of the current read, for deliver's sink

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        self.fd = sock.fileno() if sock is not None else -1

    def data_received(self, data: bytes) -> None:
        if self.response is None:
            self.abandon()  # bytes nobody asked for: this connection cannot be trusted again
            return
        self.last_read = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._deliver_batch()  # what came before the error still goes out, as it would have
            self._parser_failed(exc)
            return
        batch = self.batch
        if batch is not None:  # _deliver_batch, inlined: this runs for every read of every stream
            self.batch = None
            response = self.response
            sink = response._sink if response is not None else None
            if sink is not None:
                sink(batch if type(batch) is bytes else b"".join(batch))
        if self.in_head:
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD_BYTES:
                self._fail(UpstreamProtocolError(f"the engine's response head is larger than {MAX_HEAD_BYTES} bytes"))
                self.abandon()

    def _parser_failed(self, exc: Exception) -> None:
        cause = exc.__context__
        if isinstance(cause, _Unexpected):
            error: UpstreamError = UpstreamProtocolError("the engine sent a response nobody asked for")
        elif isinstance(cause, UpstreamError):
            error = cause  # raised by our own callback (e.g. an undecodable body)
        elif isinstance(exc, httptools.HttpParserUpgrade):
            error = UpstreamProtocolError("the engine switched protocols, which the gateway never asks for")
        else:
            error = UpstreamProtocolError(f"invalid HTTP from the engine: {exc}")
        self._fail(error)  # no-op for a response already complete: what follows it is dropped
        self.abandon()

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._stop_timer()
        self.pool.forget(self)
        response = self.response
        if response is None or response.complete:
            return
        if self.final and exc is None and self._reads_until_close():
            try:
                response._finish()  # an answer without length or chunking ends when the connection does
            except UpstreamError as error:
                self._fail(error)
            return
        before = not self.final
        reason = f": {exc}" if exc else ""
        self._fail(UpstreamClosedError(
            f"the engine closed the connection {'before answering' if before else 'mid-response'}{reason}",
            before_response=before,
        ))

    # -- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.final:
            raise _Unexpected  # a second response after the final one: never delivered

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.in_head:
            return  # a trailer: read, not kept
        self.header_bytes += len(name) + len(value) + 4  # ": " and CRLF
        if self.header_bytes > MAX_HEAD_BYTES:
            raise UpstreamProtocolError(f"the engine's response head is larger than {MAX_HEAD_BYTES} bytes")
        headers = self.response.headers  # type: ignore[union-attr]
        name = name.lower()
        headers[name] = headers[name] + b", " + value if name in headers else value

    def on_headers_complete(self) -> None:
        response = self.response
        assert response is not None
        status = self.parser.get_status_code()
        if status == 101 or status < 100:
            raise UpstreamProtocolError(f"the engine answered with status {status}, which the gateway never asks for")
        if status < 200:
            self.interim += 1  # an interim response (100 Continue, 103 Early Hints): skipped
            if self.interim > MAX_INTERIM:
                raise UpstreamProtocolError(f"the engine sent more than {MAX_INTERIM} interim responses")
            response.headers = {}
            return
        self.final = True
        self.in_head = False
        response.status = status
        encoding = response.headers.get(b"content-encoding")
        if encoding is not None:
            coding = encoding.strip().lower()
            if coding in _DECODABLE:
                response._inflate = zlib.decompressobj(47 if coding != b"deflate" else 15)
            elif coding != b"identity":
                raise UpstreamProtocolError(
                    f"the engine answered with Content-Encoding {encoding.decode('latin-1')!r}, "
                    "which the gateway did not ask for and cannot decode")
            del response.headers[b"content-encoding"]
            response.headers.pop(b"content-length", None)  # of the compressed bytes
        waiter = self.headers_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self.response._sink is not None:  # type: ignore[union-attr]
            # Every chunk this read holds goes to the relay in one call once the read is parsed
            # (``_deliver_batch``): several events that were already waiting leave for the client
            # in one write, not one each; a read of one chunk (the usual case) costs no join.
            batch = self.batch
            if batch is None:
                self.batch = body
            elif type(batch) is list:
                batch.append(body)
            else:
                self.batch = [batch, body]
        else:
            self.response._feed(body)  # type: ignore[union-attr]

    def _deliver_batch(self) -> None:
        batch = self.batch
        if batch is None:
            return
        self.batch = None
        sink = self.response._sink if self.response is not None else None
        if sink is not None:
            sink(batch if type(batch) is bytes else b"".join(batch))

    def on_message_complete(self) -> None:
        if not self.final:
            return  # the end of an interim response; the final one follows
        self._deliver_batch()  # the body's last bytes before its end (and a compressed body's tail)
        self.reusable = self.parser.should_keep_alive()
        self._stop_timer()
        self.response._finish()  # type: ignore[union-attr]

    # -- used by the pool and the response -------------------------------------------------

    def usable(self) -> bool:
        """Whether this idle connection can carry a request: still open, and nothing (EOF, stray
        bytes) waiting on its socket that the event loop has not handled yet."""
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            return False
        if self.fd < 0:
            return True  # no socket to look at: rely on the callbacks
        # A peek (about 3 us): neither uvloop's nor asyncio's transport socket offers recv().
        peek = socket.socket(socket.AF_INET, socket.SOCK_STREAM, fileno=self.fd)
        try:
            peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return True  # nothing waiting: the usual case
        except OSError:
            pass  # reset by the engine
        finally:
            peek.detach()  # the transport owns the descriptor
        self.abandon()  # EOF or bytes nobody asked for: either way, not for a new request
        return False

    async def send(self, head: bytes, body: bytes) -> UpstreamResponse:
        if self.closed:
            # Closed by the engine before anything was written: provably unseen.
            raise UpstreamClosedError("the engine closed the connection before the request was sent",
                                      before_response=True, request_unseen=True)
        response = self.response = UpstreamResponse(self)
        self.reusable = False
        self.final = False
        self.in_head = True
        self.head_bytes = self.header_bytes = 0
        self.interim = 0
        self.served += 1
        waiter = self.headers_waiter = self.loop.create_future()
        transport = self.transport
        assert transport is not None
        now = self.last_read = self.started = self.loop.time()
        pool = self.pool
        self.timer = self.loop.call_at(min(now + pool.read_timeout_s, now + pool.total_timeout_s), self._check_timeouts)
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

    def _check_timeouts(self) -> None:
        self.timer = None
        response = self.response
        if response is None or response.complete or self.closed:
            return
        pool = self.pool
        now = self.loop.time()
        total_at = self.started + pool.total_timeout_s
        if now >= total_at:
            error = UpstreamTimeoutError(f"the engine's answer took longer than the total timeout "
                                         f"({pool.total_timeout_s:g} s, upstream_total_timeout_s)")
        else:
            if self.paused:
                self.last_read = now  # the client's back-pressure, not the engine's silence
            read_at = self.last_read + pool.read_timeout_s
            if now < read_at:
                self.timer = self.loop.call_at(min(read_at, total_at), self._check_timeouts)
                return
            waiting_for = "its answer" if not self.final else "more of its answer"
            error = UpstreamTimeoutError(f"the engine sent nothing for {pool.read_timeout_s:g} s while the gateway "
                                         f"waited for {waiting_for} (upstream_read_timeout_s)")
        self._fail(error)
        self.abandon()  # closing is what makes vLLM abort the request

    def _stop_timer(self) -> None:
        timer = self.timer
        if timer is not None:
            self.timer = None
            timer.cancel()

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
            self.last_read = self.loop.time()
            self.transport.resume_reading()

    def release(self) -> None:
        """The response was read to its end: back to the pool if the engine keeps it alive."""
        self.response = None
        self.resume_reading()  # an idle connection is read: EOF or stray bytes close it at once
        if self.reusable and not self.closed:
            self.idle_since = time.monotonic()
            self.pool.park(self)
        else:
            self.abandon()

    def abandon(self) -> None:
        self._stop_timer()
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


MAX_CACHED_STARTS = 64  # request lines kept per pool: the fixed routes, not one per response id


class UpstreamPool:
    """Keep-alive connections to one engine (``http://host:port``), opened as needed, unbounded."""

    def __init__(self, base_url: str, *, connect_timeout_s: float, read_timeout_s: float = 300.0,
                 total_timeout_s: float = 1800.0, idle_timeout_s: float = 4.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"engine URL must be http://host[:port], got {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.base_path = parts.path.rstrip("/")
        self.host_header = parts.netloc.encode("idna")
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.total_timeout_s = total_timeout_s
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
        relay encodes a node's fixed headers once, not per request. Idle connections the engine
        closed are dropped before anything is written on them (see ``_Connection.usable``); the
        request is sent again only if it provably was not written (the retry rule above)."""
        head = self._head(method, path, headers, len(body))
        conn = self._take_idle()
        if conn is not None:
            try:
                return await conn.send(head, body)
            except UpstreamError as exc:
                if not exc.request_unseen:
                    raise
        conn = await self._connect()
        return await conn.send(head, body)

    def _head(self, method: str, path: str, headers: bytes, length: int) -> bytes:
        start = self._starts.get((method, path))
        if start is None:
            start = (
                f"{method} {self.base_path}{path} HTTP/1.1\r\n".encode() + b"Host: " + self.host_header + b"\r\n"
                b"Accept-Encoding: identity\r\n")
            if len(self._starts) < MAX_CACHED_STARTS:  # paths with ids in them (/v1/responses/ID) vary
                self._starts[(method, path)] = start
        return b"%s%sContent-Length: %d\r\n\r\n" % (start, headers, length)

    def _take_idle(self) -> _Connection | None:
        idle = self._idle
        deadline = time.monotonic() - self.idle_timeout_s
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to have been closed
            if conn.idle_since < deadline:
                conn.abandon()
                continue
            if conn.usable():
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
            raise UpstreamConnectTimeoutError(
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
