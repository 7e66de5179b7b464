"""The emulator's HTTP plumbing: a request read from ASGI, JSON answers, a table of routes."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from .account import CloudError, bad_request

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        if not self.body.strip():
            return {}
        try:
            return json.loads(self.body)
        except ValueError:
            raise bad_request("the request body is not valid JSON") from None

    def json_object(self) -> dict[str, Any]:
        data = self.json()
        if not isinstance(data, dict):
            raise bad_request("the request body must be a JSON object")
        return data

    def flag(self, name: str) -> bool:
        return self.query.get(name, "").lower() in ("true", "1", "yes")

    def int_param(self, name: str, default: int, *, minimum: int = 1) -> int:
        raw = self.query.get(name)
        if raw in (None, ""):
            return default
        try:
            value = int(raw)
        except ValueError:
            raise bad_request(f"{name} must be a whole number") from None
        if value < minimum:
            raise bad_request(f"{name} must be {minimum} or more")
        return value


async def read_request(scope: Scope, receive: Receive) -> Request:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode("latin-1")).items()}
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    return Request(scope["method"], scope["path"], query, headers, b"".join(chunks))


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: Any  # JSON-able

    def encode(self) -> bytes:
        return json.dumps(self.body, separators=(",", ":")).encode()


def ok(message: str, **payload: Any) -> Response:
    return Response(200, {"status": True, "message": message, **payload})


def error(err: CloudError) -> Response:
    return Response(err.status, {"status": False, "message": err.message, "error_reason": err.reason})


async def send_response(send: Send, response: Response, *, date: str | None = None) -> None:
    """Send a JSON answer; ``date`` is its ``Date`` header (the emulator's clock, not this machine's)."""
    body = response.encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if date is not None:
        headers.append((b"date", date.encode("latin-1")))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


Handler = Callable[..., Response]


class Router:
    """Routes ``METHOD /path/{name}`` patterns; ``{id}``-like parts named ``*_id`` must be integers."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        regex = re.sub(r"\{(\w+)\}", lambda m: f"(?P<{m.group(1)}>[^/]+)", pattern)
        self._routes.append((method, re.compile(f"^{regex}$"), handler))

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, Any]]:
        allowed = False
        for route_method, regex, handler in self._routes:
            found = regex.match(path)
            if found is None:
                continue
            if route_method != method:
                allowed = True
                continue
            params: dict[str, Any] = {}
            for name, value in found.groupdict().items():
                if name.endswith("_id"):
                    if not value.isdigit():
                        raise CloudError(404, "not_found", f"{value!r} is not a valid id")
                    params[name] = int(value)
                else:
                    params[name] = value
            return handler, params
        if allowed:
            raise CloudError(405, "method_not_allowed", f"Method {method} is not allowed on {path}")
        raise CloudError(404, "not_found", f"No route for {method} {path}")
