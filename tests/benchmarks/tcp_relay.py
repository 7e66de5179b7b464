"""The floor of any Python proxy: a uvloop TCP relay that only moves bytes.

    .venv/bin/python -m tests.benchmarks.tcp_relay PORT UPSTREAM_HOST:UPSTREAM_PORT

Each client connection gets its own upstream connection, and bytes are written on from the
read callbacks: no HTTP parsing, no ASGI, no task per request, no accounting. What this relay
adds beyond nginx is the cost of running a proxy on Python's event loop at all; asgi_relay.py
adds the ASGI server on top, and the gateway its own work. gateway_overhead.py runs it in the
same rotation as the engine, the gateway, nginx and the ASGI relay.
"""

from __future__ import annotations

import asyncio
import sys

import uvloop


class _Pipe(asyncio.Protocol):
    """One direction's reader; writes what it reads to its peer, pausing while the peer is full."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Pipe | None = None
        self.early: list[bytes] = []  # bytes that arrived before the peer connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.early.append(data)
        else:
            peer.transport.write(data)

    def pause_writing(self) -> None:
        if self.peer and self.peer.transport:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer and self.peer.transport:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer and self.peer.transport:
            self.peer.transport.close()


async def serve(port: int, upstream_host: str, upstream_port: int) -> None:
    loop = asyncio.get_running_loop()

    def accept() -> _Pipe:
        client = _Pipe()

        async def connect() -> None:
            try:
                _, engine = await loop.create_connection(_Pipe, upstream_host, upstream_port)
            except OSError:
                if client.transport:
                    client.transport.close()
                return
            client.peer, engine.peer = engine, client
            for data in client.early:
                engine.transport.write(data)  # type: ignore[union-attr]
            client.early.clear()

        loop.create_task(connect())
        return client

    server = await loop.create_server(accept, "127.0.0.1", port, reuse_address=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    port = int(sys.argv[1])
    host, _, upstream_port = sys.argv[2].rpartition(":")
    uvloop.run(serve(port, host, int(upstream_port)))


if __name__ == "__main__":
    main()
