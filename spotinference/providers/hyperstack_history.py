"""Hyperstack's own billing history, read for reconciliation: hourly points, rate events, credit.

``spot cost reconcile`` sets what our samples say a resource cost against what the provider
says it cost, hour by hour; these are the provider's side, as typed values:

* ``resource_hours``: ``GET /billing/billing/history/{virtual-machine,volume}/{id}/graph``
  (hourly ``incurred_bill`` points), each hour's rate filled in from the billing events
  when one rate covered the whole hour (else None: a rate we would have to guess is not given).
* ``resource_window``: ``GET /billing/billing/history/{virtual-machine,volume}/{id}``, the
  details of one window (incurred bill, rate, usage hours, per-state hours for VMs).
* ``billing_events``: ``GET /billing/billing/{virtual-machine,volume}/{id}/billing-events``.
* ``credit_balance``: ``GET /billing/user-credit/credit``.

Money is Decimal, read from the JSON number's shortest repr (so 0.0316666667 stays exactly
that); times are aware UTC datetimes; dates sent are ``YYYY-MM-DDTHH:MM:SS`` in UTC. A number
the answer lacks, or that is not a number, is None, never 0: a missing figure must not read as
"free". An answer without the documented structure (no ``billing_history`` list, no events
list) raises ``HistoryShapeError`` naming what was missing, since an empty history read as
"nothing billed" is exactly the error reconciliation exists to catch.

The volume graph's payload key is ``billing_history_snapshot_details`` in the OpenAPI file;
any ``billing_history*`` object holding a ``billing_history`` list is accepted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from .errors import ProviderError
from .hyperstack_api import Deadline, HyperstackApi
from .hyperstack_mapping import parse_time

HOUR = timedelta(hours=1)
HOURLY_GRANULARITY_S = 3600
VM_STATES = ("ACTIVE", "SHUTOFF", "HIBERNATED")  # the per-state usage times the details give
#: how much later than shown an event may have started (starts are cut down to the second)
_EVENT_SLACK = timedelta(seconds=1)
_PATHS = {"vm": "virtual-machine", "virtual-machine": "virtual-machine", "volume": "volume"}


class HistoryShapeError(ProviderError):
    """A billing history answer without the structure the OpenAPI file documents."""


@dataclass(frozen=True, slots=True)
class ResourceHour:
    """What the provider billed one resource for the minutes that ended in one UTC hour."""

    resource_type: str  # "vm" | "volume"
    resource_id: int
    hour_start: datetime  # aware UTC, on the hour
    incurred_usd: Decimal | None
    usd_per_hour: Decimal | None  # None: unknown, or the rate changed within the hour


@dataclass(frozen=True, slots=True)
class ResourceWindow:
    """The details endpoint's figures for one window."""

    resource_type: str
    resource_id: int
    name: str | None
    incurred_usd: Decimal | None
    usd_per_hour: Decimal | None
    usage_hours: Decimal | None
    usage_hours_by_state: dict[str, Decimal | None] = field(default_factory=dict)  # VMs: ACTIVE, SHUTOFF, HIBERNATED


@dataclass(frozen=True, slots=True)
class BillingEvent:
    """A change of rate: from ``start`` on, ``usd_per_hour`` (in state ``event``)."""

    resource_type: str
    resource_id: int
    event: str | None
    start: datetime | None
    duration_hours: Decimal | None
    usd_per_hour: Decimal | None
    total_cost_usd: Decimal | None

    @property
    def end(self) -> datetime | None:
        if self.start is None or self.duration_hours is None:
            return None
        return self.start + timedelta(seconds=float(self.duration_hours * 3600))


@dataclass(frozen=True, slots=True)
class CreditBalance:
    credit_usd: Decimal | None
    threshold_usd: Decimal | None
    can_create_instance: bool | None


# -- calls -------------------------------------------------------------------------------------

def resource_hours(api: HyperstackApi, resource_type: str, resource_id: int, *, start: datetime | None = None,
                   end: datetime | None = None, with_rates: bool = True,
                   deadline: Deadline | None = None) -> list[ResourceHour]:
    """The provider's hourly points for one VM or volume, oldest first (one call, two with rates).

    Without ``start``/``end`` the provider's defaults apply (the emulator: creation to now).
    """
    kind = _kind(resource_type)
    deadline = deadline or api.deadline()
    path = f"/billing/billing/history/{_PATHS[resource_type]}/{resource_id}/graph"
    body = api.call("GET", path, params=_dates(start, end), deadline=deadline)
    details = _details(body, path, api.provider)
    granularity = details.get("granularity")
    if isinstance(granularity, int) and not isinstance(granularity, bool) and granularity != HOURLY_GRANULARITY_S:
        raise HistoryShapeError(f"Hyperstack GET {path}: points every {granularity} s, not hourly",
                                provider=api.provider)
    hours: dict[datetime, Decimal | None] = {}
    for entry in _entries(details, resource_id, path, api.provider):
        metrics = entry.get("metrics") if isinstance(entry.get("metrics"), dict) else {}
        graph = metrics.get("incurred_bill_graph")
        if not isinstance(graph, list):
            raise HistoryShapeError(f"Hyperstack GET {path}: no incurred_bill_graph list", provider=api.provider)
        for point in graph:
            if not isinstance(point, dict):
                continue
            moment = parse_time(point.get("datetime"))
            if moment is None:
                continue
            hour = moment.replace(minute=0, second=0, microsecond=0)
            value = decimal_or_none(point.get("value"))
            if hour in hours:  # two points in one hour: their sum, unknown if either is
                previous = hours[hour]
                value = None if previous is None or value is None else previous + value
            hours[hour] = value
    events = billing_events(api, kind, resource_id, deadline=deadline) if with_rates and hours else []
    return [ResourceHour(kind, resource_id, hour, value, _rate_over(events, hour))
            for hour, value in sorted(hours.items())]


def resource_window(api: HyperstackApi, resource_type: str, resource_id: int, *, start: datetime | None = None,
                    end: datetime | None = None, deadline: Deadline | None = None) -> ResourceWindow:
    """The details endpoint for one window (a one-hour window gives that hour's per-state hours)."""
    kind = _kind(resource_type)
    path = f"/billing/billing/history/{_PATHS[resource_type]}/{resource_id}"
    body = api.call("GET", path, params=_dates(start, end), deadline=deadline)
    entries = _entries(_details(body, path, api.provider), resource_id, path, api.provider)
    if not entries:
        raise HistoryShapeError(f"Hyperstack GET {path}: an empty billing_history", provider=api.provider)
    entry = entries[0]
    attributes = entry.get("attributes") if isinstance(entry.get("attributes"), dict) else {}
    metrics = entry.get("metrics") if isinstance(entry.get("metrics"), dict) else {}
    states: dict[str, Decimal | None] = {}
    if kind == "vm":
        states = {state: decimal_or_none(metrics.get(f"usage_time_{state}")) for state in VM_STATES}
    name = attributes.get("resource_name")
    return ResourceWindow(kind, resource_id, name if isinstance(name, str) else None,
                          decimal_or_none(metrics.get("incurred_bill")), decimal_or_none(metrics.get("price_per_hour")),
                          decimal_or_none(metrics.get("usage_time")), states)


def billing_events(api: HyperstackApi, resource_type: str, resource_id: int, *, start: datetime | None = None,
                   end: datetime | None = None, deadline: Deadline | None = None) -> list[BillingEvent]:
    """The resource's rate changes, oldest first."""
    kind = _kind(resource_type)
    path = f"/billing/billing/{_PATHS[resource_type]}/{resource_id}/billing-events"
    body = api.call("GET", path, params=_dates(start, end), deadline=deadline)
    raw = body.get("billing_events_history") if isinstance(body, dict) else None
    if not isinstance(raw, list):
        raise HistoryShapeError(f"Hyperstack GET {path}: no billing_events_history list", provider=api.provider)
    events = []
    for item in raw:
        if not isinstance(item, dict):
            continue
        event = item.get("event")
        events.append(BillingEvent(kind, resource_id, event if isinstance(event, str) else None,
                                   parse_time(item.get("start")), decimal_or_none(item.get("event_duration")),
                                   decimal_or_none(item.get("price_per_hour")),
                                   decimal_or_none(item.get("total_cost"))))
    return sorted(events, key=lambda e: (e.start is None, e.start or datetime.min.replace(tzinfo=UTC)))


def credit_balance(api: HyperstackApi, *, deadline: Deadline | None = None) -> CreditBalance:
    """The account's credit, threshold and whether it may still create instances."""
    path = "/billing/user-credit/credit"
    body = api.call("GET", path, deadline=deadline)
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise HistoryShapeError(f"Hyperstack GET {path}: no data object", provider=api.provider)
    can_create = data.get("can_create_instance")
    return CreditBalance(decimal_or_none(data.get("credit")), decimal_or_none(data.get("threshold")),
                         can_create if isinstance(can_create, bool) else None)


# -- reading answers ---------------------------------------------------------------------------

def decimal_or_none(value: Any) -> Decimal | None:
    """A JSON number (or numeric string) as Decimal; None for anything else, never 0."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float):
        return Decimal(repr(value)) if math.isfinite(value) else None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            return None
        return number if number.is_finite() else None
    return None


def format_date(moment: datetime) -> str:
    """Hyperstack's date parameter: ``YYYY-MM-DDTHH:MM:SS`` in UTC (a naive datetime is taken as UTC)."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S")


def _dates(start: datetime | None, end: datetime | None) -> dict[str, str] | None:
    params = {}
    if start is not None:
        params["start_date"] = format_date(start)
    if end is not None:
        params["end_date"] = format_date(end)
    return params or None


def _kind(resource_type: str) -> str:
    if resource_type not in _PATHS:
        raise ValueError(f"resource_type must be 'vm' or 'volume', not {resource_type!r}")
    return "vm" if resource_type in ("vm", "virtual-machine") else "volume"


def _details(body: Any, path: str, provider: str) -> Mapping[str, Any]:
    if isinstance(body, dict):
        for key, value in body.items():
            if key.startswith("billing_history") and isinstance(value, dict) and isinstance(
                    value.get("billing_history"), list):
                return value
    raise HistoryShapeError(f"Hyperstack GET {path}: no billing_history list in the answer", provider=provider)


def _entries(details: Mapping[str, Any], resource_id: int, path: str, provider: str) -> list[dict[str, Any]]:
    """The entries about this resource (an entry whose id is absent is taken as about it)."""
    entries = [e for e in details["billing_history"] if isinstance(e, dict)]
    mine = []
    for entry in entries:
        attributes = entry.get("attributes") if isinstance(entry.get("attributes"), dict) else {}
        infrahub_id = attributes.get("infrahub_id")
        if infrahub_id is None or infrahub_id == resource_id:
            mine.append(entry)
    if entries and not mine:
        raise HistoryShapeError(f"Hyperstack GET {path}: the history is about another resource", provider=provider)
    return mine


def _rate_over(events: list[BillingEvent], hour: datetime) -> Decimal | None:
    """The one rate in force throughout the hour, from the events; None when it changed or is unknown."""
    if not events:
        return None
    rates = set()
    # Starts are given to the second, cut down: an event shown starting at S began in [S, S + 1 s).
    # It billed a minute of the hour if it began before the hour's end and ended after its start.
    low, high = hour - _EVENT_SLACK, hour + HOUR
    for i, event in enumerate(events):
        if event.start is None:
            return None
        until = events[i + 1].start if i + 1 < len(events) else event.end
        if until is not None and until <= event.start:
            continue  # an instant (DELETED): no minute is billed under it
        if event.start < high and (until is None or until > low):
            rates.add(event.usd_per_hour)
    if len(rates) != 1:
        return None
    return next(iter(rates))
