"""The relay's upstream HTTP/1.1 client against real TCP servers that answer as scripted.

The gateway's contract tests drive it through the relay against the simulator and real vLLM;
these pin down the connection handling those cannot provoke on demand: keep-alive reuse, an idle
connection the engine closed, a close mid-body, invalid HTTP, back-pressure and aborts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from spotinference.gateway.upstream import (
    READ_HIGH_WATER,
    UpstreamClosedError,
    UpstreamConnectError,
    UpstreamPool,
    UpstreamProtocolError,
    encode_headers,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class ScriptedServer:
    """A TCP server running ``handler`` per connection, counting connections and requests."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed_by_client = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> ScriptedServer:
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(self, reader, writer)  # type: ignore[call-arg]
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

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        """One request (head and Content-Length body), or None when the client closed."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            self.closed_by_client.set()
            return None
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        request = head + await reader.readexactly(length)
        self.requests.append(request)
        return request


def ok(body: bytes, *extra: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s" % (
        len(body), b"".join(h + b"\r\n" for h in extra), body)


async def keep_alive_json(server: ScriptedServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await server.read_request(reader) is not None:
        writer.write(ok(b'{"ok":true}'))
        await writer.drain()


def run(coro: Awaitable[None]) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_a_request_is_one_well_formed_write_and_the_connection_is_reused() -> None:
    async def scenario() -> None:
        async with ScriptedServer(keep_alive_json) as server:
            pool = UpstreamPool(server.url + "/", connect_timeout_s=2)
            for _ in range(3):
                headers = encode_headers([("Content-Type", "application/json"), ("X-Request-Id", "req-1")])
                response = await pool.request("POST", "/v1/chat/completions", b'{"a":1}', headers)
                assert response.status == 200
                assert response.header(b"content-type") == b"application/json"
                assert await response.read() == b'{"ok":true}'
                response.close()
            assert server.connections == 1 and pool.idle_connections == 1
            head, _, body = server.requests[0].partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            assert lines[0] == b"POST /v1/chat/completions HTTP/1.1"
            assert b"Host: " + server.url.removeprefix("http://").encode() in lines
            assert b"X-Request-Id: req-1" in lines and b"Content-Length: 7" in lines
            assert body == b'{"a":1}'
            await pool.close()

    run(scenario())


def test_headers_that_would_break_the_framing_are_refused() -> None:
    for name, value in (("X-Id", "a\r\nEvil: 1"), ("X-Id", "a\nb"), ("Bad:Name", "v"), ("", "v")):
        with pytest.raises(ValueError, match="single-line"):
            encode_headers([(name, value)])


def test_chunked_bodies_arrive_as_they_are_sent() -> None:
    async def scenario() -> None:
        gate = asyncio.Event()

        async def chunked(server: ScriptedServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            writer.write(b"7\r\ndata: 1\r\n")
            await writer.drain()
            await gate.wait()  # the first chunk must be readable before the rest exists
            writer.write(b"7\r\ndata: 2\r\n0\r\n\r\n")
            await writer.drain()
            await server.read_request(reader)

        async with ScriptedServer(chunked) as server:
            pool = UpstreamPool(server.url, connect_timeout_s=2)
            response = await pool.request("POST", "/v1/completions", b"{}")
            assert await response.next_chunk() == b"data: 1"
            gate.set()
            assert await response.next_chunk() == b"data: 2"
            assert await response.next_chunk() == b""
            assert pool.idle_connections == 1  # read to the end: back in the pool
            await pool.close()

    run(scenario())


def test_chunks_that_arrive_together_are_delivered_in_one_call_and_none_waits_for_the_next() -> None:
    # Several events already read from the engine leave for the client in one send (the relay's
    # sink is called once per read); an event that arrived alone is not held for the next.
    async def scenario() -> None:
        gate = asyncio.Event()

        async def chunked(server: ScriptedServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            await writer.drain()
            await gate.wait()
            writer.write(b"9\r\ndata: 1\n\n\r\n9\r\ndata: 2\n\n\r\n9\r\ndata: 3\n\n\r\n")  # one write, three chunks
            await writer.drain()
            await gate.wait()
            writer.write(b"9\r\ndata: 4\n\n\r\n")
            await writer.drain()
            await gate.wait()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            await server.read_request(reader)

        async with ScriptedServer(chunked) as server:
            pool = UpstreamPool(server.url, connect_timeout_s=2)
            response = await pool.request("POST", "/v1/completions", b"{}")
            calls: list[bytes] = []
            arrived = asyncio.Event()

            def sink(data: bytes) -> None:
                calls.append(data)
                arrived.set()

            delivering = asyncio.ensure_future(response.deliver(sink))
            for expected in ([b"data: 1\n\ndata: 2\n\ndata: 3\n\n"],
                             [b"data: 1\n\ndata: 2\n\ndata: 3\n\n", b"data: 4\n\n"]):
                arrived.clear()
                gate.set()
                gate.clear()
                await asyncio.wait_for(arrived.wait(), 5)  # delivered without the next write
                assert calls == expected
            gate.set()
            await asyncio.wait_for(delivering, 5)
            assert len(calls) == 2
            response.close()
            assert pool.idle_connections == 1
            await pool.close()

    run(scenario())


def test_an_idle_connection_the_engine_closed_is_replaced_transparently() -> None:
    async def one_then_close(server: ScriptedServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(ok(b"{}"))
        await writer.drain()
        # As uvicorn does after its keep-alive timeout: close the idle connection.

    async def scenario() -> None:
        async with ScriptedServer(one_then_close) as server:
            pool = UpstreamPool(server.url, connect_timeout_s=2)
            for _ in range(2):
                response = await pool.request("POST", "/v1/completions", b"{}")
                assert response.status == 200 and await response.read() == b"{}"
                response.close()
            assert server.connections == 2 and len(server.requests) == 2
            await pool.close()

    run(scenario())


def test_connections_idle_past_the_timeout_are_not_reused() -> None:
    async def scenario() -> None:
        async with ScriptedServer(keep_alive_json) as server:
            pool = UpstreamPool(server.url, connect_timeout_s=2, idle_timeout_s=0.05)
            for _ in range(2):
                response = await pool.request("POST", "/x", b"{}")
                await response.read()
                response.close()
                await asyncio.sleep(0.1)
            assert server.connections == 2
            await pool.close()

    run(scenario())


def test_a_refused_connection_is_a_connect_error() -> None:
    async def scenario() -> None:
        async with ScriptedServer(keep_alive_json) as server:
            url = server.url
        pool = UpstreamPool(url, connect_timeout_s=2)
        with pytest.raises(UpstreamConnectError, match="cannot connect to 127.0.0.1"):
            await pool.request("POST", "/x", b"{}")

    run(scenario())


def test_a_close_mid_body_is_an_error_after_the_bytes_that_arrived() -> None:
    async def half(server: ScriptedServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()

    async def scenario() -> None:
        async with ScriptedServer(half) as server:
            pool = UpstreamPool(server.url, connect_timeout_s=2)
            response = await pool.request("POST", "/x", b"{}")
            assert await response.next_chunk() == b"hello"
            with pytest.raises(UpstreamClosedError, match="mid-response") as failure:
                await response.next_chunk()
            assert failure.value.before_response is False
            response.close()
            assert pool.idle_connections == 0

    run(scenario())


def test_an_engine_that_dies_before_answering_on_a_fresh_connection_is_an_error() -> None:
    async def die(server: ScriptedServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)

    async def scenario() -> None:
        async with ScriptedServer(die) as server:
            pool = UpstreamPool(server.url, connect_timeout_s=2)
            with pytest.raises(UpstreamClosedError, match="before answering") as failure:
                await pool.request("POST", "/x", b"{}")
            assert failure.value.before_response is True
            assert server.connections == 1  # a fresh connection is not retried: the engine is gone

    run(scenario())


def test_invalid_http_is_a_protocol_error() -> None:
    async def garbage(server: ScriptedServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        await server.read_request(reader)

    async def scenario() -> None:
        async with ScriptedServer(garbage) as server:
            pool = UpstreamPool(server.url, connect_timeout_s=2)
            with pytest.raises(UpstreamProtocolError, match="invalid HTTP"):
                await pool.request("POST", "/x", b"{}")
            await asyncio.wait_for(server.closed_by_client.wait(), 2)

    run(scenario())


def test_a_slow_reader_pauses_the_engine_socket_and_still_gets_every_byte() -> None:
    total = 8 * READ_HIGH_WATER

    async def big(server: ScriptedServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % total)
        for _ in range(total // 65536):
            writer.write(b"x" * 65536)
            await writer.drain()  # blocks once the client stops reading
        await server.read_request(reader)

    async def scenario() -> None:
        async with ScriptedServer(big) as server:
            pool = UpstreamPool(server.url, connect_timeout_s=2)
            response = await pool.request("POST", "/x", b"{}")
            await asyncio.sleep(0.3)  # a client that does not read
            buffered = response._buffered
            assert response._conn.paused, "reading was not paused for a slow reader"
            assert buffered < 2 * READ_HIGH_WATER, f"{buffered} bytes buffered for a slow reader"
            body = await response.read()
            assert len(body) == total and not response._conn.paused

    run(scenario())


def test_closing_an_unfinished_response_closes_the_connection_so_the_engine_aborts() -> None:
    async def endless(server: ScriptedServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\nx\r\n")
        await writer.drain()
        if await reader.read() == b"":  # EOF from the gateway: uvicorn cancels vLLM's request here
            server.closed_by_client.set()

    async def scenario() -> None:
        async with ScriptedServer(endless) as server:
            pool = UpstreamPool(server.url, connect_timeout_s=2)
            response = await pool.request("POST", "/x", b"{}")
            assert await response.next_chunk() == b"x"
            response.close()
            await asyncio.wait_for(server.closed_by_client.wait(), 2)
            assert pool.idle_connections == 0

    run(scenario())
