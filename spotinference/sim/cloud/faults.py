"""Injected faults and the API's rate limit.

Faults are queued through ``POST /_sim/faults`` (``GET /_sim/faults`` lists the pending ones,
the kinds and this text) and consumed by the next matching ``/v1`` requests, oldest first, one
fault per request:

* ``{"kind": "rate_limit", "count": N}``: 429.
* ``{"kind": "server_error", "count": N, "status": 500|502|503}``: that status, body
  ``{"message": "Internal Server Error"}``.
* ``{"kind": "slow", "count": N, "delay_s": X}``: the answer comes after X real seconds.
* ``{"kind": "restore_capacity", "count": N, "mode": "reject"|"revert"}``: consumed only by a
  hibernate-restore of a HIBERNATED VM: ``reject`` answers 400 "Insufficient capacity ...",
  ``revert`` accepts (RESTORING) and falls back to HIBERNATED after the restore delay.

Billing faults are consumed only by ``GET /v1/billing/billing/usage``, one fault of each kind per
request (so kinds compose: a paged answer with a null total). Besides ``count`` and
``path_prefix`` they take ``deleted`` (true: only the ``?deleted=true`` list, false: only the
active one; default both) and, for the per-item kinds, ``resource_type`` (``vm``|``volume``)
and/or ``resource_id`` to pick items (default: every item of the answer):

* ``{"kind": "billing_null_total"}``: the items' ``total_bill`` is ``null``.
* ``{"kind": "billing_missing_total"}``: the items have no ``total_bill`` key at all.
* ``{"kind": "billing_jitter", "amount_usd": X}``: the items' ``total_bill`` is reported X
  lower (default 0.000001, not below 0) in that answer only; the meter itself never decreases.
* ``{"kind": "billing_missing_item"}``: the items are left out of that answer (a resource that
  vanished from both lists for one answer).
* ``{"kind": "billing_no_create_time"}``: the items have no ``create_time`` key (a provider, or
  an older API version, that does not say when it created a resource).
* ``{"kind": "billing_empty"}``: 200 ``{"status": true, "message": ..., "data": []}`` whatever
  exists.
* ``{"kind": "billing_reshaped", "shape": S}``: a 200 without the documented shape. S is
  ``no_data`` (no ``data`` key), ``data_null`` (``"data": null``), ``data_object`` (``data``
  is ``{"items": [...], "count": n}``), ``renamed`` (the list under ``usage``, no ``data``) or
  ``bare_list`` (the body is the bare list, no envelope).
* ``{"kind": "billing_paged", "page_size": P}``: the list is paged as the VM list is: the answer
  holds page ``page`` (default 1) of at most P items (the ``pageSize`` asked for when smaller)
  and ``page``, ``page_size``, ``count`` (items over all pages). Without ``count`` it lasts until
  ``DELETE /_sim/faults``; with one, each usage request uses one up (a count smaller than the
  pages a client reads changes the page size mid-listing, as a provider's change would).

Any fault may carry ``path_prefix`` to match only the paths starting with it. Faults live in
memory only: a restarted emulator has none. A bad fault body is refused with 400 naming the
field. Not faults but the same family: a resource the provider does not charge
(``exclude_billing: true``) is flagged with ``POST /_sim/exclude-billing`` (see ``admin``);
resources outside a fleet (``dev-box``) are made with the ordinary ``/v1`` calls; a second
account is a second emulator (``--state-dir``, ``--port``, ``--id-offset``).

The rate limit counts every ``/v1`` request in fixed windows of 60 real seconds, the first
starting at the first request: past ``limit`` requests in a window, every request gets 429
until the window ends (no Retry-After header, like Hyperstack). A limit of 0 disables it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

REQUEST_KINDS = ("rate_limit", "server_error", "slow")
BILLING_KINDS = ("billing_null_total", "billing_missing_total", "billing_jitter", "billing_missing_item",
                 "billing_no_create_time", "billing_empty", "billing_reshaped", "billing_paged")
ITEM_KINDS = ("billing_null_total", "billing_missing_total", "billing_jitter", "billing_missing_item",
              "billing_no_create_time")
KINDS = (*REQUEST_KINDS, "restore_capacity", *BILLING_KINDS)
SHAPES = ("no_data", "data_null", "data_object", "renamed", "bare_list")
DEFAULT_JITTER_USD = Decimal("0.000001")
DEFAULT_PAGE_SIZE = 2
SERVER_ERROR_STATUSES = (500, 502, 503, 504)
WINDOW_S = 60.0


class FaultError(ValueError):
    """An injected fault that does not make sense."""


@dataclass(slots=True)
class Fault:
    kind: str
    count: int | None  # None: until cleared (billing_paged only)
    status: int | None = None
    delay_s: float | None = None
    mode: str | None = None
    path_prefix: str | None = None
    deleted: bool | None = None
    resource_type: str | None = None
    resource_id: int | None = None
    amount_usd: str | None = None  # a Decimal, kept as its string so the fault list is JSON
    shape: str | None = None
    page_size: int | None = None

    def matches(self, path: str) -> bool:
        return self.path_prefix is None or path.startswith(self.path_prefix)

    def targets(self, item: dict[str, Any]) -> bool:
        """Whether a usage item is one this (per-item) billing fault is aimed at."""
        return ((self.resource_type is None or item.get("resource_type") == self.resource_type)
                and (self.resource_id is None or item.get("resource_id") == self.resource_id))


def parse_fault(body: Any) -> Fault:
    if not isinstance(body, dict):
        raise FaultError("a fault is a JSON object")
    kind = body.get("kind")
    if kind not in KINDS:
        raise FaultError(f"kind must be one of {', '.join(KINDS)}")
    count = body.get("count", None if kind == "billing_paged" else 1)
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 1):
        raise FaultError("count must be a whole number, 1 or more")
    prefix = body.get("path_prefix")
    if prefix is not None and not isinstance(prefix, str):
        raise FaultError("path_prefix must be a string")
    fault = Fault(kind, count, path_prefix=prefix)
    if kind in BILLING_KINDS:
        _billing_fields(fault, body)
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


def _billing_fields(fault: Fault, body: dict[str, Any]) -> None:
    deleted = body.get("deleted")
    if deleted is not None and not isinstance(deleted, bool):
        raise FaultError("deleted must be true, false or absent")
    fault.deleted = deleted
    if fault.kind in ITEM_KINDS:
        rtype, rid = body.get("resource_type"), body.get("resource_id")
        if rtype is not None and rtype not in ("vm", "volume"):
            raise FaultError("resource_type must be 'vm' or 'volume'")
        if rid is not None and (not isinstance(rid, int) or isinstance(rid, bool) or rid < 1):
            raise FaultError("resource_id must be a resource id (a whole number)")
        fault.resource_type, fault.resource_id = rtype, rid
    elif "resource_id" in body or "resource_type" in body:
        raise FaultError(f"{fault.kind} applies to the whole answer: resource_id and resource_type are not taken")
    if fault.kind == "billing_jitter":
        raw = body.get("amount_usd", str(DEFAULT_JITTER_USD))
        try:
            amount = Decimal(str(raw)) if not isinstance(raw, bool) else None
        except InvalidOperation:
            amount = None
        if amount is None or not amount.is_finite() or amount <= 0:
            raise FaultError("amount_usd must be a positive number of dollars")
        fault.amount_usd = str(amount)
    elif fault.kind == "billing_reshaped":
        fault.shape = body.get("shape", "no_data")
        if fault.shape not in SHAPES:
            raise FaultError(f"shape must be one of {', '.join(SHAPES)}")
    elif fault.kind == "billing_paged":
        size = body.get("page_size", DEFAULT_PAGE_SIZE)
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise FaultError("page_size must be a whole number, 1 or more")
        fault.page_size = size


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
        """The fault this request suffers (429, 5xx, slow), if any; restore and billing faults are not taken here."""
        return self._take(path, lambda f: f.kind in REQUEST_KINDS)

    def take_billing_faults(self, path: str, *, deleted: bool) -> dict[str, Fault]:
        """The billing faults a usage answer suffers: the oldest matching one of each kind."""
        taken: dict[str, Fault] = {}
        for kind in BILLING_KINDS:
            fault = self._take(path, lambda f, k=kind: f.kind == k and f.deleted in (None, deleted))
            if fault is not None:
                taken[kind] = fault
        return taken

    def take_restore_fault(self, path: str) -> Fault | None:
        return self._take(path, lambda f: f.kind == "restore_capacity")

    def _take(self, path: str, wanted: Callable[[Fault], bool]) -> Fault | None:
        for fault in self._faults:
            if wanted(fault) and fault.matches(path):
                if fault.count is not None:
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
