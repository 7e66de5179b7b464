"""Billing history: ``/billing/billing/history/{virtual-machine,volume}/{id}[/graph]`` and billing events.

Served from the same meters as ``/billing/billing/usage`` (see ``billing``): each billed minute
sits in the bucket of the UTC hour in which it ENDED and under the rate event in force then.

* A window is ``start_date``/``end_date`` (``YYYY-MM-DDTHH:MM:SS``, UTC; default: the
  resource's creation and now). It covers the whole hours that overlap ``[start, end)``: a
  history is kept by the hour, so a window is never cut inside one.
* An hour's ``incurred_bill`` is the total (rounded as ``total_bill`` is) at the end of the
  hour minus the total at the end of the previous hour, so the points telescope: the sum of a
  resource's hourly points over any run of hours is exactly the growth of its ``total_bill``
  over those hours, and over its whole life exactly its ``total_bill``.
* Details (no ``/graph``) answer one entry for the window: ``incurred_bill``, ``price_per_hour``
  (the rate of the last minute billed in it), ``usage_time`` (hours of existence ended in it)
  and, for VMs, ``usage_time_ACTIVE``/``_SHUTOFF``/``_HIBERNATED``. Ask for a one-hour window to
  get one hour's details. ``/graph`` answers the hourly points (``granularity`` 3600).
* Billing events: one per state change (VMs: the status entered, ``DELETED`` at the end;
  volumes: ``CREATED``, ``DELETED``), with ``price_per_hour`` from then on, ``event_duration`` in
  hours until the next event (or now) and ``total_cost`` of the minutes billed under it (the
  same telescoping, so events add up to ``total_bill``). A window keeps the events overlapping it.

Numbers are JSON floats of the 10-decimal Decimal values, as in the usage answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from .account import bad_request
from .billing import usd_of
from .clock import US_PER_HOUR, US_PER_S, EmulatedClock
from .state import ACTIVE, HIBERNATED, SHUTOFF, HourBucket, Meter, VmRecord, Volume

DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"
PER_STATE = (ACTIVE, SHUTOFF, HIBERNATED)


@dataclass(frozen=True, slots=True)
class HourPoint:
    hour: int  # UTC hours since the Unix epoch
    incurred_usd: Decimal
    bucket: HourBucket


def parse_date(value: str | None, name: str) -> int | None:
    """``YYYY-MM-DDTHH:MM:SS`` (UTC) as Unix microseconds; a 400 naming the parameter otherwise."""
    if value is None or value == "":
        return None
    try:
        moment = datetime.strptime(value, DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise bad_request(f"{name} must be formatted YYYY-MM-DDTHH:MM:SS, got {value!r}") from None
    return int(moment.timestamp()) * US_PER_S


def window(clock: EmulatedClock, res: VmRecord | Volume, start_date: str | None, end_date: str | None) -> tuple[int, int]:
    """``[start, end)`` in Unix microseconds: the dates given, else creation and now."""
    start = parse_date(start_date, "start_date")
    end = parse_date(end_date, "end_date")
    if start is None:
        start = clock.epoch_us + res.created_us
    if end is None:
        end = clock.epoch_us + clock.now_us() + 1
    if end <= start:
        raise bad_request("end_date must be after start_date")
    return start, end


def hour_points(meter: Meter, start: int, end: int) -> list[HourPoint]:
    """The hourly points of the hours overlapping ``[start, end)``, oldest first."""
    # Minutes billed before buckets existed (an older state file) come before every bucket.
    cumulative = meter.usd_hour_minutes - sum((b.usd_hour_minutes for b in meter.hours.values()), Decimal(0))
    points = []
    for hour in sorted(meter.hours):
        bucket = meter.hours[hour]
        before, cumulative = cumulative, cumulative + bucket.usd_hour_minutes
        if hour * US_PER_HOUR < end and (hour + 1) * US_PER_HOUR > start:
            points.append(HourPoint(hour, usd_of(cumulative) - usd_of(before), bucket))
    return points


def hour_iso(hour: int) -> str:
    return datetime.fromtimestamp(hour * 3600, UTC).strftime(DATE_FORMAT)


def details_metrics(points: list[HourPoint], *, vm: bool) -> dict[str, Any]:
    incurred = sum((p.incurred_usd for p in points), Decimal(0))
    rate = points[-1].bucket.usd_per_hour if points else Decimal(0)
    minutes = sum(p.bucket.minutes for p in points)
    metrics: dict[str, Any] = {
        "price_per_hour": float(rate), "non_discounted_price_per_hour": float(rate),
        "incurred_bill": float(incurred), "non_discounted_bill": float(incurred),
        "usage_time": minutes / 60,
    }
    if vm:
        for state in PER_STATE:
            metrics[f"usage_time_{state}"] = sum(p.bucket.state_minutes.get(state, 0) for p in points) / 60
    return metrics


def graph_metrics(points: list[HourPoint]) -> dict[str, Any]:
    incurred = sum((p.incurred_usd for p in points), Decimal(0))
    return {"incurred_bill": float(incurred),
            "incurred_bill_graph": [{"datetime": hour_iso(p.hour) + "Z", "value": float(p.incurred_usd)}
                                    for p in points]}


def attributes(res: VmRecord | Volume) -> dict[str, Any]:
    return {"id": str(res.id), "infrahub_id": res.id, "resource_name": res.name}


def billing_events(clock: EmulatedClock, res: VmRecord | Volume, start: int, end: int) -> list[dict[str, Any]]:
    meter = res.meter
    now = clock.now_us()
    out = []
    for i, event in enumerate(meter.events):
        following = meter.events[i + 1] if i + 1 < len(meter.events) else None
        until_us = following.start_us if following else (res.terminated_us if res.terminated_us is not None else now)
        after = following.usd_hour_minutes_before if following else meter.usd_hour_minutes
        begin_abs, until_abs = clock.epoch_us + event.start_us, clock.epoch_us + until_us
        instant = until_abs == begin_abs  # DELETED, or a state left at once: kept when it lies in the window
        if begin_abs >= end or (until_abs <= start if not instant else begin_abs < start):
            continue
        out.append({
            "event": event.event,
            "start": clock.iso_at(event.start_us),
            "event_duration": (until_us - event.start_us) / US_PER_HOUR,
            "price_per_hour": float(event.usd_per_hour),
            "total_cost": float(usd_of(after) - usd_of(event.usd_hour_minutes_before)),
        })
    return out
