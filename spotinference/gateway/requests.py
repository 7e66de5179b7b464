"""Reading and checking a client's request before anything is sent upstream."""

from __future__ import annotations

import json
import math
import re
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
    one_prompt: bool = True  # chat, or completions of one prompt: choice index = the choice's i < n


class ClientGone(Exception):
    """The client disconnected before its request was read."""


def header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def bearer_credentials(value: bytes | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None for any other form.

    The scheme is case-insensitive (RFC 9110 section 11.1), and spaces and tabs around the token
    are not part of it; the token is compared as Latin-1 text, so no byte sequence fails here.
    """
    match = _BEARER.fullmatch(value) if value else None
    return match.group(1).decode("latin-1") if match else None


_BEARER = re.compile(rb"[ \t]*bearer[ \t]+([^ \t]+)[ \t]*", re.IGNORECASE)


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


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (RFC 8259); send a finite number or null")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e400: Infinity by another name
        raise ValueError(f"{text} is out of the range of a 64-bit float")
    return value


# One decoder for every request: json.loads with any option builds a new one per call (~4 us).
_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _first_lone_surrogate(payload: Any) -> str | None:
    """The path of the first string (key or value) holding a lone surrogate, walked without
    recursion. Only an escape (``\\ud800``) can carry one: the body is decoded strictly, so raw
    surrogate bytes are already refused as invalid UTF-8."""
    stack: list[tuple[str, Any]] = [("", payload)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return where or "(body)"
        elif isinstance(value, dict):
            for key, item in value.items():
                path = f"{where}.{key}" if where else str(key)
                try:
                    key.encode("utf-8")
                except UnicodeEncodeError:
                    return where or "(body)"
                stack.append((path, item))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", item) for i, item in enumerate(value))
    return None


def parse_request(endpoint: str, body: bytes) -> ClientRequest:
    """The client's request, checked: whatever bytes arrive, this returns a request or raises a
    400 GatewayError that says what is wrong (never another exception: each would be a bare 500)."""
    try:
        return _parse(endpoint, body)
    except RecursionError:
        # Python's JSON scanner (and json.dumps) recurse once per level: ~1,000 levels of "[" in
        # 2 KB exhaust the stack. No OpenAI request is nested anywhere near that deep.
        raise GatewayError(400, "request body is nested too deeply to parse", code="invalid_json") from None


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The request's JSON object with a non-empty string ``model``, or a 400 GatewayError that
    says what is wrong (never another exception: each would be a bare 500)."""
    try:
        payload = _json_object(body)
    except RecursionError:
        raise GatewayError(400, "request body is nested too deeply to parse", code="invalid_json") from None
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise GatewayError(400, "you must provide a model parameter (a string)", param="model")
    return payload


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        # Decoded strictly: json.loads would let UTF-8-encoded surrogates through ("surrogatepass").
        utf8 = body[:1] == b"{" and body[1:2] != b"\x00"  # what SDKs send; else UTF-16/32 or a BOM
        payload = _DECODER.decode(body.decode("utf-8" if utf8 else json.detect_encoding(body)))
    except (ValueError, UnicodeDecodeError) as exc:
        raise GatewayError(400, f"request body is not valid JSON: {_ascii(exc)}", code="invalid_json") from None
    if b"\\u" in body and _SURROGATE_ESCAPE.search(body) is not None:  # memchr-fast when absent
        where = _first_lone_surrogate(payload)
        if where is not None:
            raise GatewayError(400, f"request body is not valid JSON: '{_ascii(where)}' holds a lone UTF-16 "
                               "surrogate escape (\\ud800-\\udfff without its pair), which is not a Unicode "
                               "character", param=_ascii(where), code="invalid_json")
    if not isinstance(payload, dict):
        raise GatewayError(400, "request body must be a JSON object")
    return payload


def _parse(endpoint: str, body: bytes) -> ClientRequest:
    payload = _json_object(body)
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise GatewayError(400, "you must provide a model parameter (a string)", param="model")
    if endpoint == CHAT:
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            raise GatewayError(400, "'messages' must be a non-empty array", param="messages")
        one_prompt = True
    else:
        prompt = payload.get("prompt")
        if not isinstance(prompt, str | list) or (isinstance(prompt, list) and not prompt):
            raise GatewayError(400, "'prompt' must be a string or a non-empty array", param="prompt")
        # A string, one list of token ids, or a list of one prompt; a list of several is a batch.
        one_prompt = isinstance(prompt, str) or len(prompt) == 1 or type(prompt[0]) is int
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
        return ClientRequest(endpoint, model, True, body, state, one_prompt)
    # Ask for usage on every chunk: an aborted stream's last running total is what gets billed.
    if "stream_options" not in payload and body.lstrip().startswith(b"{"):  # UTF-8, not UTF-16/32
        # The common case: add the member to the client's own bytes instead of re-encoding them.
        closing = body.rstrip().rfind(b"}")
        return ClientRequest(endpoint, model, True, body[:closing] + _USAGE_OPTIONS + body[closing:], state,
                             one_prompt)
    payload["stream_options"] = {**options, "include_usage": True, "continuous_usage_stats": True}
    return ClientRequest(endpoint, model, True, json.dumps(payload, separators=(",", ":")).encode(), state,
                         one_prompt)


def _ascii(value: object) -> str:
    """Client text quoted in an error message, escaped so that it can always be encoded."""
    return str(value).encode("ascii", "backslashreplace").decode("ascii")
