"""CallbackSender against a real uvicorn server and a client that stops reading.

The relay sends engine chunks from the upstream read callback with it; these check what the
gateway's contract tests cannot provoke on demand: a client whose socket is full blocks the send,
later messages wait in order, the source is paused until everything is out, and a failed send is
reported once.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import uvicorn

from spotinference.gateway.callback_send import CallbackSender
from tests.servers import dechunk

CHUNK = b"x" * 4096
CHUNKS = 2000  # 8 MB: far past the kernel's and uvicorn's buffers for a client that does not read


class StreamingApp:
    """Streams CHUNKS numbered chunks, each pushed from a loop callback as the relay does."""

    def __init__(self) -> None:
        self.pauses = 0
        self.resumes = 0
        self.paused = False
        self.failures: list[BaseException] = []
        self.done = threading.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        loop = asyncio.get_running_loop()
        next_chunk = 0

        def pause() -> None:
            self.pauses += 1
            self.paused = True

        def resume() -> None:
            self.resumes += 1
            self.paused = False
            loop.call_soon(produce)

        sender = CallbackSender(send, pause=pause, resume=resume, failed=self.failures.append)

        def produce() -> None:
            # Like a paused socket: what was already read (here three more chunks, as httptools
            # hands on the rest of a read) still arrives after the pause, then nothing until resumed.
            nonlocal next_chunk
            after_pause = 0
            while next_chunk < CHUNKS and after_pause < 3:
                sender.push({"type": "http.response.body", "body": b"%06d" % next_chunk + CHUNK, "more_body": True})
                next_chunk += 1
                after_pause += self.paused
            if next_chunk == CHUNKS and not finished.done():
                finished.set_result(None)

        finished: asyncio.Future[None] = loop.create_future()
        loop.call_soon(produce)
        await finished
        await sender.drain()
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        self.done.set()


def serve(app: StreamingApp) -> tuple[uvicorn.Server, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, loop="uvloop", http="httptools", log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    return server, sock.getsockname()[1]


def read_response(client: socket.socket) -> bytes:
    data = bytearray()
    while not data.endswith(b"0\r\n\r\n"):
        piece = client.recv(1 << 20)
        assert piece, "the server closed before the end of the response"
        data += piece
    return bytes(data)


def test_a_client_that_stops_reading_blocks_sends_pauses_the_source_and_still_gets_every_chunk_in_order() -> None:
    app = StreamingApp()
    server, port = serve(app)
    try:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.settimeout(30)  # a stalled server fails the test instead of hanging it
        client.connect(("127.0.0.1", port))
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(1.0)  # not reading: the server's socket fills up
        assert app.pauses >= 1, "a send blocked by a full socket did not pause the source"
        assert app.paused and not app.done.is_set()
        body = read_response(client)
        assert app.done.wait(5)
        head, _, chunked = body.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        payload = dechunk(chunked)
        numbers = [int(payload[i:i + 6]) for i in range(0, len(payload), 6 + len(CHUNK))]
        assert numbers == list(range(CHUNKS)), "chunks lost, repeated or reordered"
        assert len(payload) == CHUNKS * (6 + len(CHUNK))
        assert app.resumes == app.pauses and not app.paused
        assert app.failures == []
        client.close()
    finally:
        server.should_exit = True
