"""OpenAI-shaped error responses: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import json
from typing import Any

# The `type` OpenAI's API uses for each status; SDKs map statuses to exception classes.
_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


class EngineFault(Exception):
    """The engine sent something the gateway cannot relay or bill (bad status, bytes, usage).

    Answered as 502 (or, once a stream has begun, an error event), like an engine that failed."""


class GatewayError(Exception):
    """An error the gateway answers with itself (as opposed to one relayed from vLLM)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: int | None = None,
        allow: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.retry_after_s = retry_after_s
        self.allow = allow  # a 405's Allow header: the method the route takes

    def body(self) -> bytes:
        return error_body(self.status, self.message, param=self.param, code=self.code)

    def headers(self) -> list[tuple[bytes, bytes]]:
        headers = [(b"content-type", b"application/json")]
        if self.retry_after_s is not None:
            headers.append((b"retry-after", str(self.retry_after_s).encode()))
        if self.allow is not None:
            headers.append((b"allow", self.allow.encode()))
        return headers


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> bytes:
    payload: dict[str, Any] = {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }
    return json.dumps(payload).encode()


def stream_error_event(status: int, message: str, code: str) -> bytes:
    """The event that ends a stream whose upstream failed; OpenAI's SDK raises APIError on it."""
    return b"data: " + error_body(status, message, code=code) + b"\n\n"


# Anthropic's error types by status (https://docs.anthropic.com/en/api/errors); its SDK maps the
# status to an exception class and shows the message.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def anthropic_error_body(status: int, message: str) -> bytes:
    """``{"type": "error", "error": {"type", "message"}}``, as the Messages API answers errors."""
    kind = _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()
