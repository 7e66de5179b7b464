"""Reading and checking a client's request before anything is sent upstream."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .errors import GatewayError
from .sse import StreamState

_USAGE_OPTIONS = b',"stream_options":{"include_usage":true,"continuous_usage_stats":true}'
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


@dataclass
class ClientRequest:
    endpoint: str
    model: str
    stream: bool
    upstream_body: bytes  # the client's bytes, or a re-encoding with usage options added
    stream_state: StreamState | None


class ClientGone(Exception):
    """The client disconnected before its request was read."""


def header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


async def read_body(scope: dict[str, Any], receive: Any, limit: int) -> bytes:
    declared = header(scope, b"content-length")
    too_big = GatewayError(
        413, f"request body is larger than the gateway's limit of {limit} bytes", code="request_too_large"
    )
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        body = message.get("body", b"")
        size += len(body)
        if size > limit:
            raise too_big
        parts.append(body)
        if not message.get("more_body", False):
            return b"".join(parts)


def _bool_field(payload: dict[str, Any], key: str, where: str = "") -> bool | None:
    value = payload.get(key)
    if value is None or isinstance(value, bool):
        return value
    name = f"{where}{key}"
    raise GatewayError(400, f"'{name}' must be a boolean, got {type(value).__name__}", param=name)


def parse_request(endpoint: str, body: bytes) -> ClientRequest:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise GatewayError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise GatewayError(400, "request body must be a JSON object")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise GatewayError(400, "you must provide a model parameter (a string)", param="model")
    if endpoint == CHAT:
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            raise GatewayError(400, "'messages' must be a non-empty array", param="messages")
    else:
        prompt = payload.get("prompt")
        if not isinstance(prompt, str | list) or (isinstance(prompt, list) and not prompt):
            raise GatewayError(400, "'prompt' must be a string or a non-empty array", param="prompt")
    stream = bool(_bool_field(payload, "stream"))
    options = payload.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise GatewayError(400, "'stream_options' must be an object", param="stream_options")
    if not stream:
        # Passed through unchanged: vLLM answers a stray stream_options itself.
        return ClientRequest(endpoint, model, False, body, None)
    options = options or {}
    include = bool(_bool_field(options, "include_usage", "stream_options."))
    continuous = bool(_bool_field(options, "continuous_usage_stats", "stream_options."))
    state = StreamState(client_include_usage=include, client_continuous_usage=include and continuous)
    if include and continuous:
        return ClientRequest(endpoint, model, True, body, state)
    # Ask for usage on every chunk: an aborted stream's last running total is what gets billed.
    if "stream_options" not in payload and body.lstrip().startswith(b"{"):  # UTF-8, not UTF-16/32
        # The common case: add the member to the client's own bytes instead of re-encoding them.
        closing = body.rstrip().rfind(b"}")
        return ClientRequest(endpoint, model, True, body[:closing] + _USAGE_OPTIONS + body[closing:], state)
    payload["stream_options"] = {**options, "include_usage": True, "continuous_usage_stats": True}
    return ClientRequest(endpoint, model, True, json.dumps(payload, separators=(",", ":")).encode(), state)
