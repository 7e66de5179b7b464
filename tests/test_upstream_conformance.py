"""Conformance of the hand-written upstream client (``gateway/upstream.py``) against exact bytes.

Keeping our own HTTP/1.1 client is a choice (its docstring gives the measured reason); this suite
is its price. A raw-socket server (asyncio ``start_server``) writes byte sequences real engines,
middleboxes and buggy servers send, and the client must answer each one the way that keeps one
client's answer out of another's: interim responses, stray bytes and extra responses, close-
delimited bodies, chunk extensions and trailers, bad chunk sizes, early closes, pipelining garbage,
content-length mismatches, huge heads, unasked-for compression, timeouts, and when a request may
be sent twice. The last test lets hypothesis generate responses and compares the client's verdict
(accept or reject, and the body) with h11's, a maintained pure-Python HTTP/1.1 parser.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import time
import zlib
from collections.abc import Awaitable, Callable

import h11
import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spotinference.gateway.upstream import (
    MAX_HEAD_BYTES,
    MAX_INTERIM,
    READ_HIGH_WATER,
    UpstreamClosedError,
    UpstreamError,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamTimeoutError,
)

Script = Callable[["RawServer", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"


def fixed(body: bytes) -> bytes:
    return OK_HEAD + b"content-length: %d\r\n\r\n%s" % (len(body), body)


class RawServer:
    """Runs ``script`` per connection; records each request's body and the connections made."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.bodies: list[bytes] = []
        self.eof = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> RawServer:
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.script(self, reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def request(self, reader: asyncio.StreamReader) -> bytes | None:
        """The next request's body (the client always sends Content-Length), None at EOF."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            self.eof.set()
            return None
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        body = await reader.readexactly(length)
        self.bodies.append(body)
        return body


def serve_each(answer: Callable[[bytes], bytes]) -> Script:
    """Answer every request on the connection with ``answer(request body)``."""
    async def script(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (request := await server.request(reader)) is not None:
            writer.write(answer(request))
            await writer.drain()
    return script


def once(data: bytes, *, then_close: bool = False, then: bytes = b"", delay_s: float = 0.0) -> Script:
    """Answer the first request on the first connection with ``data``; optionally more bytes
    after ``delay_s``; then answer every later request with its own body echoed."""
    async def script(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if server.connections > 1:
            return await serve_each(fixed)(server, reader, writer)
        if await server.request(reader) is None:
            return
        writer.write(data)
        await writer.drain()
        if then:
            await asyncio.sleep(delay_s)
            writer.write(then)
            await writer.drain()
        if then_close:
            return
        while (request := await server.request(reader)) is not None:
            writer.write(fixed(request))
            await writer.drain()
    return script


def run(coro: Awaitable[None]) -> None:
    uvloop.run(coro)  # type: ignore[arg-type]  # the gateway's event loop (uvicorn runs on uvloop)


async def ask(pool: UpstreamPool, body: bytes = b"{}") -> tuple[int, bytes]:
    response = await pool.request("POST", "/v1/chat/completions", body)
    try:
        return response.status, await response.read()
    finally:
        response.close()


def pool_for(server: RawServer, **timeouts: float) -> UpstreamPool:
    return UpstreamPool(server.url, connect_timeout_s=2, read_timeout_s=timeouts.get("read", 5),
                        total_timeout_s=timeouts.get("total", 10))


# -- interim responses -------------------------------------------------------------------------

def test_interim_responses_are_skipped_and_the_connection_serves_the_next_request() -> None:
    interim = (b"HTTP/1.1 100 Continue\r\n\r\n"
               b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n"
               b"HTTP/1.1 102 Processing\r\n\r\n")

    async def scenario() -> None:
        async with RawServer(serve_each(lambda body: interim + fixed(b"answer to " + body))) as server:
            pool = pool_for(server)
            for i in range(3):
                response = await pool.request("POST", "/x", b"%d" % i)
                assert response.status == 200 and b"link" not in response.headers
                assert await response.read() == b"answer to %d" % i
                response.close()
            assert server.connections == 1
            await pool.close()

    run(scenario())


def test_interim_responses_split_across_reads_are_skipped() -> None:
    async def script(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.request(reader)
        for piece in (b"HTTP/1.1 100 Cont", b"inue\r\n\r", b"\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n", b"ok"):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.01)
        await server.request(reader)

    async def scenario() -> None:
        async with RawServer(script) as server:
            assert await ask(pool_for(server)) == (200, b"ok")

    run(scenario())


@pytest.mark.parametrize("data, message", [
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n", "status 101"),
    (b"HTTP/1.1 100 Continue\r\n\r\n" * (MAX_INTERIM + 1) + fixed(b"late"), "interim responses"),
])
def test_unasked_for_switches_and_endless_interim_responses_are_protocol_errors(data: bytes, message: str) -> None:
    async def scenario() -> None:
        async with RawServer(once(data)) as server:
            with pytest.raises(UpstreamProtocolError, match=message):
                await ask(pool_for(server))
            await asyncio.wait_for(server.eof.wait(), 2)  # the connection was closed

    run(scenario())


# -- stray bytes and extra responses -----------------------------------------------------------

@pytest.mark.parametrize("extra", [
    fixed(b'{"stray":1}'),  # a second, unsolicited response (pipelining garbage)
    b"HTTP/1.1 200 OK\r\ncontent-le",  # the start of one
    b"garbage that is not HTTP",
    b"\x00\xff",
])
def test_bytes_after_a_complete_response_close_the_connection_and_reach_no_one(extra: bytes) -> None:
    async def scenario() -> None:
        async with RawServer(once(fixed(b"first") + extra)) as server:
            pool = pool_for(server)
            assert await ask(pool) == (200, b"first")
            assert await ask(pool, b"second") == (200, b"second")
            assert server.connections == 2, "the connection that carried stray bytes was reused"
            await pool.close()

    run(scenario())


def test_a_stray_response_arriving_while_the_connection_is_idle_closes_it() -> None:
    async def scenario() -> None:
        async with RawServer(once(fixed(b"first"), then=fixed(b'{"stray":1}'), delay_s=0.05)) as server:
            pool = pool_for(server)
            assert await ask(pool) == (200, b"first")
            await asyncio.sleep(0.3)  # the event loop handles the stray bytes while idle
            assert pool.idle_connections == 0
            assert await ask(pool, b"second") == (200, b"second")
            assert server.connections == 2
            await pool.close()

    run(scenario())


def test_stray_bytes_not_yet_handled_by_the_event_loop_are_found_before_reuse() -> None:
    async def scenario() -> None:
        async with RawServer(once(fixed(b"first"), then=fixed(b'{"stray":1}'), delay_s=0.05)) as server:
            pool = pool_for(server)
            assert await ask(pool) == (200, b"first")
            await asyncio.sleep(0.2)  # the server is about to write the stray response...
            time.sleep(0.2)  # ...which arrives in the kernel while the event loop does not run
            assert await ask(pool, b"second") == (200, b"second")
            assert server.connections == 2
            await pool.close()

    run(scenario())


# -- when a request may be sent twice ------------------------------------------------------------

def test_an_idle_connection_closed_by_the_engine_before_the_write_is_retried_once_unseen() -> None:
    async def scenario() -> None:
        async with RawServer(once(fixed(b"first"), then_close=True)) as server:
            pool = pool_for(server)
            assert await ask(pool) == (200, b"first")
            await asyncio.sleep(0.05)
            time.sleep(0.1)  # the engine's FIN is in the kernel, not yet seen by the event loop
            assert await ask(pool, b"again") == (200, b"again")
            assert server.bodies == [b"{}", b"again"], "the request reached the engine more than once"
            await pool.close()

    run(scenario())


def test_a_close_after_the_request_was_written_is_not_retried() -> None:
    async def script(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.request(reader)
        writer.write(fixed(b"first"))
        await writer.drain()
        await server.request(reader)  # read the second request, then die without answering

    async def scenario() -> None:
        async with RawServer(script) as server:
            pool = pool_for(server)
            assert await ask(pool) == (200, b"first")
            with pytest.raises(UpstreamClosedError, match="before answering") as failure:
                await ask(pool, b"second")
            assert failure.value.request_unseen is False  # the engine may have run it
            assert server.bodies == [b"{}", b"second"] and server.connections == 1

    run(scenario())


# -- framing: close-delimited, chunked, lengths ------------------------------------------------------

def test_a_body_without_length_or_chunking_ends_with_the_connection() -> None:
    async def scenario() -> None:
        async with RawServer(once(OK_HEAD + b"\r\nuntil the close", then_close=True)) as server:
            pool = pool_for(server)
            assert await ask(pool) == (200, b"until the close")
            assert pool.idle_connections == 0

    run(scenario())


def test_a_reset_ends_a_close_delimited_body_with_an_error_not_a_short_answer() -> None:
    async def script(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.request(reader)
        writer.write(OK_HEAD + b"\r\npart of it")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        writer.transport.abort()

    async def scenario() -> None:
        async with RawServer(script) as server:
            with pytest.raises(UpstreamClosedError, match="mid-response"):
                await ask(pool_for(server))

    run(scenario())


def test_chunk_extensions_and_trailers_are_read_and_trailers_are_not_headers() -> None:
    data = (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-real: 1\r\n\r\n"
            b"5;name=value;other\r\nhello\r\n6;q=\"quoted\"\r\n world\r\n0;last\r\nx-trailer: t\r\nx-real: 2\r\n\r\n")

    async def scenario() -> None:
        async with RawServer(once(data)) as server:
            pool = pool_for(server)
            response = await pool.request("POST", "/x", b"{}")
            assert await response.read() == b"hello world"
            assert response.header(b"x-real") == b"1" and b"x-trailer" not in response.headers
            response.close()
            assert await ask(pool, b"next") == (200, b"next")
            assert server.connections == 1  # a complete, well-formed answer: reused
            await pool.close()

    run(scenario())


@pytest.mark.parametrize("bad", [b"zz\r\nnot hex\r\n", b"-1\r\nx\r\n", b"ffffffffffffffffffff\r\nx\r\n",
                                 b"5\r\nhelloXX0\r\n\r\n", b" 5\r\nhello\r\n0\r\n\r\n"])
def test_bad_chunk_sizes_are_protocol_errors_and_close_the_connection(bad: bytes) -> None:
    data = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + bad

    async def scenario() -> None:
        async with RawServer(once(data)) as server:
            pool = pool_for(server)
            with pytest.raises(UpstreamProtocolError, match="invalid HTTP"):
                await ask(pool)
            await asyncio.wait_for(server.eof.wait(), 2)
            assert pool.idle_connections == 0

    run(scenario())


@pytest.mark.parametrize("data", [
    OK_HEAD + b"content-length: 10\r\n\r\nfive!",  # shorter than announced, then a close
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\na\r\nfive!",  # a chunk cut short
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfive!\r\n",  # no last chunk
])
def test_an_early_close_mid_body_is_an_error_after_the_bytes_that_arrived(data: bytes) -> None:
    async def scenario() -> None:
        async with RawServer(once(data, then_close=True)) as server:
            response = await pool_for(server).request("POST", "/x", b"{}")
            assert await response.next_chunk() == b"five!"
            with pytest.raises(UpstreamClosedError, match="mid-response"):
                await response.next_chunk()
            response.close()

    run(scenario())


@pytest.mark.parametrize("head", [
    OK_HEAD + b"content-length: 2\r\ncontent-length: 3\r\n\r\n",
    OK_HEAD + b"content-length: 2\r\ntransfer-encoding: chunked\r\n\r\n",
    OK_HEAD + b"content-length: -2\r\n\r\n",
    OK_HEAD + b"content-length: 2x\r\n\r\n",
])
def test_contradictory_or_invalid_lengths_are_protocol_errors(head: bytes) -> None:
    async def scenario() -> None:
        async with RawServer(once(head + b"okok")) as server:
            with pytest.raises(UpstreamProtocolError):
                await ask(pool_for(server))

    run(scenario())


def test_a_body_longer_than_its_content_length_is_cut_there_and_the_rest_never_delivered() -> None:
    async def scenario() -> None:
        async with RawServer(once(OK_HEAD + b"content-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\nmore")) as server:
            pool = pool_for(server)
            assert await ask(pool) == (200, b"ok")
            assert await ask(pool, b"next") == (200, b"next")
            assert server.connections == 2

    run(scenario())


@pytest.mark.parametrize("head", [
    OK_HEAD + b"x-big: " + b"a" * (MAX_HEAD_BYTES + 10) + b"\r\ncontent-length: 0\r\n\r\n",
    OK_HEAD + b"".join(b"x-h%d: v\r\n" % i for i in range(MAX_HEAD_BYTES // 8)) + b"content-length: 0\r\n\r\n",
    b"HTTP/1.1 103 Early Hints\r\nlink: " + b"b" * MAX_HEAD_BYTES + b"\r\n\r\n" + fixed(b"x"),
])
def test_huge_response_heads_are_refused(head: bytes) -> None:
    async def scenario() -> None:
        async with RawServer(once(head)) as server:
            with pytest.raises(UpstreamProtocolError, match="head is larger"):
                await ask(pool_for(server))

    run(scenario())


# -- encoding --------------------------------------------------------------------------------

def test_requests_ask_for_identity_and_compressed_answers_are_decoded() -> None:
    plain = b'{"usage":{"prompt_tokens":3}}' * 100
    for coding, packed in ((b"gzip", gzip.compress(plain)), (b"x-gzip", gzip.compress(plain)),
                           (b"deflate", zlib.compress(plain))):
        data = OK_HEAD + b"content-encoding: %s\r\ncontent-length: %d\r\n\r\n%s" % (coding, len(packed), packed)

        async def scenario() -> None:
            async with RawServer(once(data)) as server:
                pool = pool_for(server)
                response = await pool.request("POST", "/x", b"{}")
                assert b"content-encoding" not in response.headers
                assert await response.read() == plain
                response.close()
                assert await ask(pool, b"next") == (200, b"next")
                assert server.connections == 1

        run(scenario())


def test_a_compressed_stream_is_delivered_decoded_event_by_event() -> None:
    compressor = zlib.compressobj(wbits=31)
    events = [b"data: {\"n\":%d}\n\n" % i for i in range(5)]
    pieces = [compressor.compress(e) + compressor.flush(zlib.Z_SYNC_FLUSH) for e in events] + [compressor.flush()]
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in pieces if c)
    data = b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"

    async def scenario() -> None:
        async with RawServer(once(data)) as server:
            response = await pool_for(server).request("POST", "/x", b"{}")
            got: list[bytes] = []
            await response.deliver(got.append)
            assert b"".join(got) == b"".join(events)
            response.close()

    run(scenario())


@pytest.mark.parametrize("coding, body, message", [
    (b"gzip", gzip.compress(b"x" * 1000, mtime=0)[:-12], "ends before"),
    (b"gzip", b"not gzip at all", "does not decode"),
    (b"br", b"\x0b\x02\x80hi\x03", "cannot decode"),
])
def test_undecodable_or_unknown_encodings_are_protocol_errors(coding: bytes, body: bytes, message: str) -> None:
    data = OK_HEAD + b"content-encoding: %s\r\ncontent-length: %d\r\n\r\n%s" % (coding, len(body), body)

    async def scenario() -> None:
        async with RawServer(once(data)) as server:
            with pytest.raises(UpstreamProtocolError, match=message):
                await ask(pool_for(server))

    run(scenario())


def test_the_request_says_identity_encoding() -> None:
    seen: list[bytes] = []

    async def script(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))

    async def scenario() -> None:
        async with RawServer(script) as server:
            with pytest.raises(UpstreamClosedError):
                await ask(pool_for(server))
        assert b"\r\nAccept-Encoding: identity\r\n" in seen[0]

    run(scenario())


# -- timeouts --------------------------------------------------------------------------------

def silent(server: RawServer) -> Script:
    async def script(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.request(reader)
        await reader.read()  # until the client gives up
        server.eof.set()
    return script


def test_silence_before_the_answer_is_a_read_timeout_and_closes_the_connection() -> None:
    async def scenario() -> None:
        async with RawServer(silent(None)) as server:  # type: ignore[arg-type]
            started = time.monotonic()
            with pytest.raises(UpstreamTimeoutError, match="upstream_read_timeout_s"):
                await ask(pool_for(server, read=0.3))
            # It waited for the silence, not failed at once; the loop's timers may fire up to a few
            # ms early against time.monotonic, and a busy machine may fire them late: no upper bound.
            assert time.monotonic() - started >= 0.25
            await asyncio.wait_for(server.eof.wait(), 2)  # closed: vLLM aborts the request

    run(scenario())


def test_silence_mid_body_is_a_read_timeout_after_the_bytes_that_arrived() -> None:
    async def script(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.request(reader)
        for _ in range(4):  # bytes every 0.2 s: each gap is shorter than the read timeout
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" if _ == 0 else b"1\r\nx\r\n")
            await writer.drain()
            await asyncio.sleep(0.2)
        await reader.read()

    async def scenario() -> None:
        async with RawServer(script) as server:
            response = await pool_for(server, read=0.5).request("POST", "/x", b"{}")
            got: list[bytes] = []
            with pytest.raises(UpstreamTimeoutError, match="more of its answer"):
                await response.deliver(got.append)
            assert b"".join(got) == b"xxx"
            response.close()

    run(scenario())


def test_a_drip_feeding_engine_is_cut_by_the_total_timeout() -> None:
    async def script(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.request(reader)
        for byte in fixed(b"x" * 1000):
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.02)

    async def scenario() -> None:
        async with RawServer(script) as server:
            started = time.monotonic()
            with pytest.raises(UpstreamTimeoutError, match="upstream_total_timeout_s"):
                await ask(pool_for(server, read=0.5, total=0.6))
            # libuv keeps its loop time in whole milliseconds, so its timer may fire up to 1 ms
            # before time.monotonic() says 0.6 s (seen: 0.5998 s); earlier than that is a bug.
            assert 0.6 - 0.001 <= time.monotonic() - started < 2

    run(scenario())


def test_a_slow_client_pausing_the_read_is_not_the_engines_silence() -> None:
    total = 8 * READ_HIGH_WATER

    async def script(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % total + b"x" * total)
        await writer.drain()
        await server.request(reader)

    async def scenario() -> None:
        async with RawServer(script) as server:
            response = await pool_for(server, read=0.2).request("POST", "/x", b"{}")
            await asyncio.sleep(0.6)  # not reading for three read timeouts: the engine is paused, not silent
            assert len(await response.read()) == total

    run(scenario())


# -- back-pressure and the pool ----------------------------------------------------------------

def test_a_delivered_response_returns_its_connection_only_on_close_and_its_late_calls_touch_nothing() -> None:
    async def head_then_body(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (request := await server.request(reader)) is not None:
            answer = fixed(request)
            writer.write(answer[:-len(request)])
            await asyncio.sleep(0.05)  # the body comes after the head: a paused connection would never read it
            writer.write(request)

    async def scenario() -> None:
        async with RawServer(head_then_body) as server:
            pool = pool_for(server)
            first = await pool.request("POST", "/x", b"first")
            got: list[bytes] = []
            await first.deliver(got.append)
            assert got == [b"first"]
            assert pool.idle_connections == 0, "pooled while its client's send may still be running"
            first.close()
            assert pool.idle_connections == 1
            second = await pool.request("POST", "/x", b"second")
            first.pause_reading()  # a late callback of the first request's sender
            first.interrupt(RuntimeError("the first client left"))
            assert await asyncio.wait_for(second.read(), 2) == b"second"
            second.close()
            assert server.connections == 1
            await pool.close()

    run(scenario())


def test_a_response_closed_with_unread_body_is_not_pooled() -> None:
    async def scenario() -> None:
        async with RawServer(serve_each(fixed)) as server:
            pool = pool_for(server)
            response = await pool.request("POST", "/x", b"unread")
            await asyncio.sleep(0.1)  # complete, but nobody took the body
            assert response.complete
            response.close()
            assert pool.idle_connections == 0

    run(scenario())


# -- verdicts compared with h11 ------------------------------------------------------------------

def h11_verdict(data: bytes) -> tuple[int, bytes] | None:
    """h11's reading of ``data`` (then EOF) as the answer to one POST: (status, body) or None."""
    conn = h11.Connection(our_role=h11.CLIENT)
    conn.send(h11.Request(method="POST", target="/", headers=[("Host", "e"), ("Content-Length", "0")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    conn.receive_data(b"")
    status, body = 0, []
    try:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    return None
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return status, b"".join(body)
            else:  # NEED_DATA after EOF, ConnectionClosed: the answer was cut short
                return None
    except h11.RemoteProtocolError:
        return None


async def our_verdict(data: bytes) -> tuple[int, bytes] | None:
    async def script(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.request(reader)
        writer.write(data)
        await writer.drain()

    async with RawServer(script) as server:
        pool = pool_for(server, read=2, total=5)
        try:
            response: UpstreamResponse = await pool.request("POST", "/", b"")
            try:
                return response.status, await response.read()
            finally:
                response.close()
        except UpstreamTimeoutError:
            raise
        except UpstreamError:
            return None
        finally:
            await pool.close()


TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-0123456789", min_size=1, max_size=12)
BODY = st.binary(max_size=64)


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    """An HTTP/1.1 answer built from parts, each part well-formed or broken in a known way."""
    out = b""
    for _ in range(draw(st.integers(0, 2))):
        out += b"HTTP/1.1 %d %s\r\n\r\n" % (draw(st.sampled_from([100, 102, 103])), draw(TOKEN).encode())
    status = draw(st.sampled_from([200, 201, 299, 400, 404, 500, 503, 599]))
    reason = draw(st.sampled_from([b"OK", b"", b"Weird Reason", b"x"]))
    headers = [(draw(TOKEN).encode(), draw(TOKEN).encode()) for _ in range(draw(st.integers(0, 3)))]
    body = draw(BODY)
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    encoded = body
    if framing == "length":
        length = draw(st.sampled_from(["exact", "exact", "short", "long", "garbage", "twice"]))
        value = {"exact": len(body), "short": max(len(body) - 1, 0), "long": len(body) + 3}.get(length, len(body))
        if length == "garbage":
            headers.append((b"Content-Length", b"1x"))
        elif length == "twice":
            headers += [(b"Content-Length", b"%d" % value), (b"Content-Length", b"%d" % (value + 1))]
        else:
            headers.append((b"Content-Length", b"%d" % value))
    elif framing == "chunked":
        headers.append((b"Transfer-Encoding", b"chunked"))
        pieces = []
        at = 0
        while at < len(body):
            size = draw(st.integers(1, max(1, len(body) - at)))
            ext = draw(st.sampled_from([b"", b";a=b", b";x"]))
            size_text = draw(st.sampled_from([b"%x", b"%X"])) % size
            pieces.append(size_text + ext + b"\r\n" + body[at:at + size] + b"\r\n")
            at += size
        last = draw(st.sampled_from([b"0\r\n\r\n", b"0\r\nx-trailer: t\r\n\r\n", b"", b"0\r\n", b"zz\r\n\r\n"]))
        encoded = b"".join(pieces) + last
    head = b"HTTP/1.1 %d %s\r\n" % (status, reason) + b"".join(n + b": " + v + b"\r\n" for n, v in headers)
    out += head + b"\r\n" + encoded
    cut = draw(st.one_of(st.none(), st.integers(0, len(out))))
    return out if cut is None else out[:cut]


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=responses())
def test_the_clients_verdicts_match_h11s(data: bytes) -> None:
    expected = h11_verdict(data)
    got = uvloop.run(our_verdict(data))
    assert got == expected, f"ours {got!r}, h11 {expected!r} for {data!r}"
