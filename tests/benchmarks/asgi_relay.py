"""The floor of a proxy on an ASGI server: the gateway's own streaming path with none of its work.

    .venv/bin/python -m tests.benchmarks.asgi_relay PORT UPSTREAM_HOST:UPSTREAM_PORT

A bare ASGI app under uvicorn, started with the gateway's server settings, that sends each POST
to the engine through the gateway's upstream client and hands the engine's body chunks to the
ASGI ``send`` from the upstream read callback (``CallbackSender``), as the relay does. It reads
no JSON, rewrites no SSE, checks no key and records no usage. Whatever the gateway adds beyond
it is the gateway's own work per request and per chunk; what it adds beyond tcp_relay.py is the
ASGI server's HTTP handling (request parsing, the ASGI cycle, chunked framing per ``send``).
gateway_overhead.py runs it in the same rotation as the other targets.
"""

from __future__ import annotations

import sys
from typing import Any

import uvicorn

from spotinference.gateway.callback_send import CallbackSender
from spotinference.gateway.server import UVICORN_HOT_PATH
from spotinference.gateway.upstream import UpstreamPool


class AsgiRelay:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.pool: UpstreamPool | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return  # no lifespan work
        if self.pool is None:
            self.pool = UpstreamPool(self.upstream, connect_timeout_s=5.0)
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = b"Content-Type: application/json\r\n" if body else b""
        upstream = await self.pool.request(scope["method"], scope["path"], body, headers)
        try:
            await send({"type": "http.response.start", "status": upstream.status,
                        "headers": [(b"content-type", upstream.header(b"content-type", b"application/json"))]})
            sender = CallbackSender(send, pause=upstream.pause_reading, resume=upstream.resume_reading,
                                    failed=upstream.interrupt)
            await upstream.deliver(lambda data: sender.push({"type": "http.response.body", "body": data, "more_body": True}))
            await sender.drain()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            upstream.close()


def main() -> None:
    port, upstream = int(sys.argv[1]), f"http://{sys.argv[2]}"
    uvicorn.run(AsgiRelay(upstream), host="127.0.0.1", port=port, **UVICORN_HOT_PATH)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
