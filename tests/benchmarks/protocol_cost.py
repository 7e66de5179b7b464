"""What the gateway's client limits cost per request: uvicorn's httptools protocol against
``LimitedHttpToolsProtocol`` (spotinference/gateway/http_limits.py), A/B, interleaved.

    .venv/bin/python -m tests.benchmarks.protocol_cost

In one process on uvloop, with a transport that drops what is written: (1) a new connection
with one request, (2) requests on one kept-alive connection, each answered by a two-byte app.
Prints min and median microseconds per request over 15 interleaved rounds. The difference is
the limits' whole per-request cost (a timer armed and cancelled, a few extra Python calls);
nothing runs per response chunk.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from typing import Any

import uvloop
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from spotinference.gateway.http_limits import LimitedHttpToolsProtocol

REQUEST = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nAccept-Encoding: gzip, deflate\r\n"
           b"Connection: keep-alive\r\nAccept: application/json\r\nContent-Type: application/json\r\n"
           b"User-Agent: OpenAI/Python 1.0\r\nAuthorization: Bearer sk-spot-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n"
           b"Content-Length: 120\r\n\r\n" + b"x" * 120)
ROUNDS = 15


async def app(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


class DropTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def write(self, data: Any) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass


async def _new_connections(cls: type, config: Config, state: ServerState, n: int) -> float:
    loop = asyncio.get_running_loop()
    began = time.perf_counter()
    for _ in range(n):
        protocol = cls(config, state, {}, loop)
        protocol.connection_made(DropTransport())
        protocol.data_received(REQUEST)
        for _ in range(3):
            await asyncio.sleep(0)
        protocol.connection_lost(None)
    return (time.perf_counter() - began) / n * 1e6


async def _kept_alive(cls: type, config: Config, state: ServerState, n: int) -> float:
    protocol = cls(config, state, {}, asyncio.get_running_loop())
    protocol.connection_made(DropTransport())
    began = time.perf_counter()
    for _ in range(n):
        protocol.data_received(REQUEST)
        for _ in range(3):
            await asyncio.sleep(0)
    elapsed = (time.perf_counter() - began) / n * 1e6
    protocol.connection_lost(None)
    return elapsed


async def main() -> None:
    config = Config(app, lifespan="off", log_level="warning")
    config.load()
    state = ServerState()
    gc.disable()
    for name, measure in (("new connection + request", _new_connections), ("kept-alive request", _kept_alive)):
        results: dict[str, list[float]] = {}
        for cls in (HttpToolsProtocol, LimitedHttpToolsProtocol) * ROUNDS:
            results.setdefault(cls.__name__, []).append(await measure(cls, config, state, 3000))
        print(name)
        for cls_name, values in results.items():
            print(f"  {cls_name:28} min {min(values):6.2f} us, median {statistics.median(values):6.2f} us")


if __name__ == "__main__":
    uvloop.run(main())
