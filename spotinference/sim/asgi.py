"""The few ASGI pieces every route of the simulated engine uses: vLLM's headers, reading a
body, answering, and aborting a request whose client went away."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .validation import parse_json_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# vLLM's CORS middleware adds "vary: Origin" to every response.
VARY = (b"vary", b"Origin")
JSON = (b"content-type", b"application/json")
SSE = [(b"content-type", b"text/event-stream; charset=utf-8"), VARY]
NOT_FOUND = b'{"detail":"Not Found"}'
UNAUTHORIZED = b'{"error":"Unauthorized"}'
METHOD_NOT_ALLOWED = b'{"detail":"Method Not Allowed"}'


async def send_chunk(send: Send, chunk: bytes) -> None:
    await send({"type": "http.response.body", "body": chunk, "more_body": True})


async def abort_on_disconnect(receive: Receive, work: Callable[[dict[str, bool]], Awaitable[None]]) -> None:
    """Run ``work(state)``; like vLLM, a client that goes away cancels its request, streamed or
    not. ``work`` sets ``state["finished"]`` once its last byte is sent."""
    task = asyncio.current_task()
    state = {"finished": False, "disconnected": False}

    async def watch_disconnect() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        if not state["finished"] and task is not None:
            state["disconnected"] = True
            task.cancel()

    watcher = asyncio.create_task(watch_disconnect())
    try:
        await work(state)
    except asyncio.CancelledError:
        if not state["disconnected"]:
            raise
        # The client left: the abort is this request's normal end, not an error.
    finally:
        watcher.cancel()


def random_id() -> str:
    return os.urandom(8).hex()  # vLLM's random_uuid(): 16 hex digits


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def respond(
    send: Send, status: int, body: bytes, content_type: tuple[bytes, bytes] | None, *, allow: bytes | None = None
) -> None:
    # Starlette's order: allow (on a 405), content-length, content-type; then CORS's vary.
    headers = [(b"allow", allow)] if allow is not None else []
    headers.append((b"content-length", str(len(body)).encode()))
    if content_type is not None:
        headers.append(content_type)
    headers.append(VARY)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def read_json(scope: Scope, receive: Receive) -> Any:
    body = await read_body(receive)
    content_type = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1")
    return parse_json_body(content_type, body)
