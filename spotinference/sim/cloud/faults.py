"""Injected faults and the API's rate limit.

Faults are queued through ``POST /_sim/faults`` and consumed by the next matching ``/v1``
requests, oldest first, one fault per request:

* ``{"kind": "rate_limit", "count": N}``: 429.
* ``{"kind": "server_error", "count": N, "status": 500|502|503}``: that status, body
  ``{"message": "Internal Server Error"}``.
* ``{"kind": "slow", "count": N, "delay_s": X}``: the answer comes after X real seconds.
* ``{"kind": "restore_capacity", "count": N, "mode": "reject"|"revert"}``: consumed only by a
  hibernate-restore of a HIBERNATED VM: ``reject`` answers 400 "Insufficient capacity ...",
  ``revert`` accepts (RESTORING) and falls back to HIBERNATED after the restore delay.

Any fault may carry ``path_prefix`` to match only the paths starting with it. Faults live in
memory only: a restarted emulator has none.

The rate limit counts every ``/v1`` request in fixed windows of 60 real seconds, the first
starting at the first request: past ``limit`` requests in a window, every request gets 429
until the window ends (no Retry-After header, like Hyperstack). A limit of 0 disables it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

KINDS = ("rate_limit", "server_error", "slow", "restore_capacity")
SERVER_ERROR_STATUSES = (500, 502, 503, 504)
WINDOW_S = 60.0


class FaultError(ValueError):
    """An injected fault that does not make sense."""


@dataclass(slots=True)
class Fault:
    kind: str
    count: int
    status: int | None = None
    delay_s: float | None = None
    mode: str | None = None
    path_prefix: str | None = None

    def matches(self, path: str) -> bool:
        return self.path_prefix is None or path.startswith(self.path_prefix)


def parse_fault(body: Any) -> Fault:
    if not isinstance(body, dict):
        raise FaultError("a fault is a JSON object")
    kind = body.get("kind")
    if kind not in KINDS:
        raise FaultError(f"kind must be one of {', '.join(KINDS)}")
    count = body.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise FaultError("count must be a whole number, 1 or more")
    prefix = body.get("path_prefix")
    if prefix is not None and not isinstance(prefix, str):
        raise FaultError("path_prefix must be a string")
    fault = Fault(kind, count, path_prefix=prefix)
    if kind == "server_error":
        fault.status = body.get("status", 500)
        if fault.status not in SERVER_ERROR_STATUSES:
            raise FaultError(f"status must be one of {', '.join(map(str, SERVER_ERROR_STATUSES))}")
    elif kind == "slow":
        delay = body.get("delay_s")
        if not isinstance(delay, (int, float)) or isinstance(delay, bool) or not 0 <= delay <= 600:
            raise FaultError("delay_s must be a number of seconds between 0 and 600")
        fault.delay_s = float(delay)
    elif kind == "restore_capacity":
        fault.mode = body.get("mode", "reject")
        if fault.mode not in ("reject", "revert"):
            raise FaultError("mode must be 'reject' or 'revert'")
    return fault


class FaultBook:
    def __init__(self) -> None:
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> None:
        self._faults.append(fault)

    def clear(self) -> None:
        self._faults.clear()

    def pending(self) -> list[dict[str, Any]]:
        return [asdict(f) for f in self._faults]

    def take_request_fault(self, path: str) -> Fault | None:
        """The fault this request suffers (429, 5xx, slow), if any; restore faults are not taken here."""
        return self._take(path, lambda f: f.kind != "restore_capacity")

    def take_restore_fault(self, path: str) -> Fault | None:
        return self._take(path, lambda f: f.kind == "restore_capacity")

    def _take(self, path: str, wanted: Callable[[Fault], bool]) -> Fault | None:
        for fault in self._faults:
            if wanted(fault) and fault.matches(path):
                fault.count -= 1
                if fault.count <= 0:
                    self._faults.remove(fault)
                return fault
        return None


class RateLimiter:
    def __init__(self, limit_per_minute: int, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit_per_minute
        self._monotonic = monotonic
        self._window_start: float | None = None
        self._count = 0

    def allow(self) -> bool:
        """Count one request; False when it is past the limit of its window."""
        if self.limit <= 0:
            return True
        now = self._monotonic()
        if self._window_start is None or now - self._window_start >= WINDOW_S:
            self._window_start, self._count = now, 0
        self._count += 1
        return self._count <= self.limit
