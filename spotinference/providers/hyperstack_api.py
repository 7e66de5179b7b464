"""The thin REST layer under the Hyperstack provider: one HTTP call in, one JSON payload out.

It knows the transport and nothing about VMs: the ``api_key`` header, the ``{"status": true,
"message": ..., <payload>}`` envelope (and the bare arrays some endpoints answer), the mapping of
error answers onto ``providers.errors``, and retries. 429, 5xx, timeouts and dropped
connections are retried with exponential backoff and equal jitter (the n-th wait lies in
``[base·2ⁿ, 2·base·2ⁿ]``) until the call's deadline would pass; other 4xx are final.

The API key lives only in the request headers: no message, repr or log line carries it, and any
text echoed back by the server is scrubbed of it before it reaches an exception. The HTTP
transport, the clock, the sleep and the jitter source are injected so tests can run fast.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Generator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from .errors import (
    ProviderAuthError,
    ProviderError,
    ProviderNotFoundError,
    ProviderRateLimitedError,
    ProviderUnavailableError,
)

log = logging.getLogger(__name__)

#: the longest single wait between retries: Hyperstack's rate limit resets each minute
MAX_WAIT_S = 60.0
_MESSAGE_CHARS = 300


class Deadline:
    """A point in time on an injected monotonic clock."""

    def __init__(self, clock: Callable[[], float], seconds: float) -> None:
        self.clock = clock
        self.started = clock()
        self.at = self.started + seconds

    def remaining(self) -> float:
        return max(0.0, self.at - self.clock())

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0.0

    def elapsed(self) -> float:
        return self.clock() - self.started


class _ApiKeyAuth(httpx.Auth):
    """Adds ``api_key: <key>`` to each request; its repr never shows the key."""

    def __init__(self, key: str) -> None:
        self._key = key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["api_key"] = self._key
        yield request

    def __repr__(self) -> str:
        return "_ApiKeyAuth(<hidden>)"


class _Retryable(Exception):
    """One attempt failed in a way worth retrying (429, 5xx, timeout, connection)."""

    def __init__(self, status_code: int | None, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.reason = reason


class HyperstackApi:
    """Calls to one Hyperstack account (or the emulator), with retries inside a deadline."""

    def __init__(
        self,
        *,
        provider: str,
        base_url: str,
        api_key: str,
        request_timeout_s: float = 30.0,
        retry_deadline_s: float = 120.0,
        retry_base_s: float = 1.0,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        if not api_key:
            raise ValueError("an API key is required")
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self.request_timeout_s = request_timeout_s
        self.retry_deadline_s = retry_deadline_s
        self.retry_base_s = retry_base_s
        self.clock = clock
        self.sleep = sleep
        self._jitter = jitter
        self._key = api_key
        # The provider's clock as its last answer's HTTP Date header gave it (None without one).
        self.last_answer_date: datetime | None = None
        self._client = httpx.Client(
            base_url=self.base_url,
            auth=_ApiKeyAuth(api_key),
            headers={"accept": "application/json"},
            timeout=request_timeout_s,
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"HyperstackApi(provider={self.provider!r}, base_url={self.base_url!r})"

    def close(self) -> None:
        self._client.close()

    # -- deadlines and backoff -------------------------------------------------------------------

    def deadline(self, seconds: float | None = None) -> Deadline:
        return Deadline(self.clock, self.retry_deadline_s if seconds is None else seconds)

    def backoff_s(self, attempt: int) -> float:
        """The wait before retry number ``attempt + 1``: equal jitter over ``[b·2ⁿ, 2·b·2ⁿ]``."""
        floor = min(self.retry_base_s * (2**attempt), MAX_WAIT_S / 2)
        return floor + self._jitter() * floor

    def wait(self, attempt: int, deadline: Deadline, *, at_least_s: float = 0.0) -> bool:
        """Sleep before the next try; False (without sleeping) when that would pass the deadline."""
        delay = max(self.backoff_s(attempt), at_least_s)
        if delay >= deadline.remaining():
            return False
        self.sleep(delay)
        return True

    # -- calls -----------------------------------------------------------------------------------

    def call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        retry: bool = True,
        deadline: Deadline | None = None,
    ) -> Any:
        """The decoded JSON answer (envelope included) of one logical call.

        ``retry=False`` makes exactly one attempt: for calls that must not be repeated blindly
        (a POST that may have taken effect); the caller decides what to check before trying again.
        """
        deadline = deadline or self.deadline()
        attempt = 0
        while True:
            try:
                return self._once(method, path, params, json, deadline)
            except _Retryable as failure:
                last = failure
            if not retry or not self.wait(attempt, deadline):
                raise self._gave_up(method, path, last, attempt + 1, deadline)
            log.debug("%s %s: retry %d after %s", method, path, attempt + 1, last.status_code or last.message)
            attempt += 1

    def _once(self, method: str, path: str, params: Any, json: Any, deadline: Deadline) -> Any:
        # Each attempt may take request_timeout_s, but not much past the call's deadline.
        timeout = min(self.request_timeout_s, max(deadline.remaining(), 1.0))
        try:
            response = self._client.request(method, path, params=params, json=json, timeout=timeout)
        except httpx.TimeoutException:
            raise _Retryable(None, f"no answer within {timeout:g} s") from None
        except httpx.TransportError as exc:
            raise _Retryable(None, f"connection failed ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            raise ProviderError(
                f"{self._label(method, path)} failed: {type(exc).__name__}", provider=self.provider
            ) from None
        self.last_answer_date = _http_date(response.headers.get("date"))
        return self._decode(method, path, response)

    def _decode(self, method: str, path: str, response: httpx.Response) -> Any:
        status = response.status_code
        body = _json_or_none(response)
        message, reason = self._message_of(body, response)
        if status == 429 or status >= 500:
            raise _Retryable(status, message, reason)
        if status >= 400:
            raise self._refusal(method, path, status, message, reason)
        if body is None:
            if not response.content.strip():
                return {}
            raise ProviderError(
                f"{self._label(method, path)} answered {status} with a body that is not JSON: {message}",
                provider=self.provider,
                status_code=status,
            )
        if isinstance(body, dict) and body.get("status") is False:
            # A 200 that says it failed is a refusal like any other.
            raise self._refusal(method, path, status, message, reason)
        return body

    # -- errors ----------------------------------------------------------------------------------

    def _label(self, method: str, path: str) -> str:
        return f"Hyperstack {method} {path}"

    def _refusal(self, method: str, path: str, status: int, message: str, reason: str | None) -> ProviderError:
        text = f"{self._label(method, path)} refused ({status}): {message}"
        if status in (401, 403) or reason in ("unauthorized", "forbidden"):
            env = f"SPOT_PROVIDERS__{self.provider.upper()}__API_KEY"
            return ProviderAuthError(
                text, provider=self.provider, status_code=status, reason=reason,
                hint=f"check the API key: export {env} or set api_key_file in [providers.{self.provider}]",
            )
        if status == 404 or reason == "not_found":
            return ProviderNotFoundError(text, provider=self.provider, status_code=status, reason=reason)
        return ProviderError(text, provider=self.provider, status_code=status, reason=reason)

    def _gave_up(self, method: str, path: str, last: _Retryable, attempts: int, deadline: Deadline) -> ProviderError:
        tries = f"{attempts} attempt{'s' if attempts != 1 else ''} in {deadline.elapsed():.1f} s"
        last_answer = f"{last.status_code} {last.message}" if last.status_code else last.message
        text = f"{self._label(method, path)} failed after {tries}; last answer: {last_answer}"
        if last.status_code == 429:
            return ProviderRateLimitedError(
                text, provider=self.provider, status_code=429, reason=last.reason,
                hint="Hyperstack allows 500 requests a minute per address: poll less often or wait a minute",
            )
        return ProviderUnavailableError(
            text, provider=self.provider, status_code=last.status_code, reason=last.reason,
            hint="the provider is down, slow or unreachable: try again later, or raise retry_deadline_s",
        )

    def _message_of(self, body: Any, response: httpx.Response) -> tuple[str, str | None]:
        """The provider's own message and error_reason, one line, without the API key."""
        reason = None
        if isinstance(body, dict):
            raw = body.get("message") or body.get("error") or body.get("detail") or ""
            if isinstance(body.get("error_reason"), str):
                reason = body["error_reason"]
        else:
            raw = response.text if body is None else ""
        text = " ".join(str(raw).split()) or response.reason_phrase or "no message"
        return self._scrub(text[:_MESSAGE_CHARS]), reason

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "[api key]") if self._key in text else text


def _json_or_none(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return None


def _http_date(value: str | None) -> datetime | None:
    """An HTTP Date header (RFC 9110 IMF-fixdate) as an aware UTC datetime, or None."""
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def payload(body: Any, *keys: str) -> Any:
    """The first of ``keys`` present in an envelope (Hyperstack names each payload differently)."""
    if isinstance(body, dict):
        for key in keys:
            if key in body and body[key] is not None:
                return body[key]
    return None


_CAPACITY = re.compile(r"capacity|insufficient|not enough|\bno\b.*\bavailable\b|out of stock", re.IGNORECASE)
_NOT_CAPACITY = re.compile(r"credit|balance|fund|payment", re.IGNORECASE)


def says_no_capacity(message: str) -> bool:
    """Whether a refusal is for lack of hardware (not of money): restore and create use it."""
    return bool(_CAPACITY.search(message)) and not _NOT_CAPACITY.search(message)
