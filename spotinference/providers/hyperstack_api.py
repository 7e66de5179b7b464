"""The thin REST layer under the Hyperstack provider: one HTTP call in, one JSON payload out.

It knows the transport and nothing about VMs: the ``api_key`` header, the ``{"status": true,
"message": ..., <payload>}`` envelope (and the bare arrays some endpoints answer), the mapping of
error answers onto ``providers.errors``, and retries. 429, 5xx, timeouts and dropped
connections are retried with exponential backoff and equal jitter (the n-th wait lies in
``[base·2ⁿ, 2·base·2ⁿ]``) until the call's deadline would pass; other 4xx are final.

A connection that cannot even be opened (refused, DNS failure) is not a slow provider but an
absent one: it is retried every half second for a short grace (``connect_grace_s``, a few seconds:
enough to ride out a restart or a blip in the middle of a long wake), then the call fails with
``ProviderUnreachableError`` rather than backing off for the whole deadline. Nothing was sent on
such a connection, so it is retried even for calls made with ``retry=False``.

Each retry after an answer (or a timeout) is logged at INFO on this module's logger with ``extra={"spot_retry": RetryNotice}``:
the library never prints; the CLI shows these records on stderr.

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
from dataclasses import asdict, dataclass
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
    ProviderUnreachableError,
)

log = logging.getLogger(__name__)

#: the longest single wait between retries: Hyperstack's rate limit resets each minute
MAX_WAIT_S = 60.0
#: how long refused connections are retried before the provider counts as unreachable
CONNECT_GRACE_S = 3.0
#: the wait between attempts while connections are refused
CONNECT_RETRY_S = 0.5
_MESSAGE_CHARS = 300


@dataclass(frozen=True)
class RetryNotice:
    """One retry about to happen, for whoever shows the operator what the client is doing."""

    provider: str
    method: str
    path: str
    answer: str  # what the failed attempt got: "503 Service Unavailable", "connection refused", ...
    attempt: int  # the attempt that failed, from 1
    wait_s: float  # the sleep before the next attempt
    elapsed_s: float  # since the call began

    def describe(self) -> str:
        return (f"Hyperstack {self.method} {self.path}: {self.answer}; retry {self.attempt} in {self.wait_s:.1f} s"
                f" ({self.elapsed_s:.1f} s into the call)")

    def to_json(self) -> dict[str, Any]:
        return {"event": "retry", **asdict(self)}


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


class _Unreachable(_Retryable):
    """The connection could not be opened (refused, DNS failure): nothing reached the provider."""


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
        connect_grace_s: float = CONNECT_GRACE_S,
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
        self.connect_grace_s = connect_grace_s
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

        ``retry=False`` makes one attempt that reaches the provider: for calls that must not be
        repeated blindly (a POST that may have taken effect); the caller decides what to check
        before trying again. Refused connections are still retried (nothing was sent).
        """
        deadline = deadline or self.deadline()
        attempt = 0
        refused_since: float | None = None  # when the current run of refused connections began
        while True:
            try:
                return self._once(method, path, params, json, deadline)
            except _Unreachable as failure:
                refused_since = self.clock() if refused_since is None else refused_since
                if self._refused_too_long(refused_since, deadline):
                    raise self._unreachable(method, path, failure, attempt + 1, deadline) from None
                # Nothing was sent, so even a retry=False call may try again: quickly, and without a
                # notice each time (the grace is short; its outcome is the one line that matters).
                log.debug("%s %s: %s, trying again", method, path, failure.message)
                self.sleep(CONNECT_RETRY_S)
                attempt += 1
                continue
            except _Retryable as failure:
                last = failure
                refused_since = None
            wait_s = self.backoff_s(attempt) if retry else 0.0
            if not retry or wait_s >= deadline.remaining():
                raise self._gave_up(method, path, last, attempt + 1, deadline)
            self._report(method, path, last, attempt, wait_s, deadline)
            self.sleep(wait_s)
            attempt += 1

    def _refused_too_long(self, refused_since: float, deadline: Deadline) -> bool:
        now = self.clock()
        return now - refused_since >= self.connect_grace_s or now + CONNECT_RETRY_S >= deadline.at

    def _report(self, method: str, path: str, failure: _Retryable, attempt: int, wait_s: float, deadline: Deadline) -> None:
        answer = f"{failure.status_code} {failure.message}" if failure.status_code else failure.message
        notice = RetryNotice(self.provider, method, path, answer, attempt + 1, wait_s, deadline.elapsed())
        log.info("%s", notice.describe(), extra={"spot_retry": notice})

    def _once(self, method: str, path: str, params: Any, json: Any, deadline: Deadline) -> Any:
        # Each attempt may take request_timeout_s, but not much past the call's deadline.
        timeout = min(self.request_timeout_s, max(deadline.remaining(), 1.0))
        try:
            response = self._client.request(method, path, params=params, json=json, timeout=timeout)
        except httpx.TimeoutException:
            raise _Retryable(None, f"no answer within {timeout:g} s") from None
        except httpx.ConnectError as exc:
            raise _Unreachable(None, _connect_failure(exc)) from None
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

    def _unreachable(self, method: str, path: str, last: _Retryable, attempts: int, deadline: Deadline) -> ProviderError:
        tries = f"{attempts} attempt{'s' if attempts != 1 else ''} in {deadline.elapsed():.1f} s"
        return ProviderUnreachableError(
            f"cannot reach {self.provider} at {self.base_url} ({self._scrub(last.message)}, {tries})",
            provider=self.provider,
            hint=f"is the provider (or `spot sim cloud`) running? check base_url in [providers.{self.provider}]",
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


def _connect_failure(exc: httpx.ConnectError) -> str:
    """'connection refused', 'name not resolved', ...: the OS's reason, short and lower case."""
    text = str(exc) or type(exc).__name__
    if "refused" in text.lower():
        return "connection refused"
    if "name" in text.lower() and ("resol" in text.lower() or "known" in text.lower()):
        return "host name not resolved"
    return " ".join(text.split())[:_MESSAGE_CHARS]


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
