"""Per-minute billing of the emulated account, exact to the (Decimal) cent fraction.

The rule, chosen so a bill can be computed by hand:

* A resource's billing minutes end at ``created + k × 60 s`` of emulated time (k = 1, 2, ...),
  as long as it exists. At each such instant it is billed one whole minute at the hourly rate
  in force at that instant, divided by 60. A state change due at the same instant counts as
  already made. So partial minutes are never prorated: a minute is billed entirely at the rate
  of the state the resource is in when the minute ends. A minute ending after the resource is
  terminated is not billed: the minute in progress at termination is free.
* Rates: a VM bills its flavor's rate while ACTIVE, SHUTOFF, STOPPING or STARTING,
  ``HIBERNATED_USD_PER_HOUR`` while HIBERNATED, and nothing while CREATING, BUILD, HIBERNATING,
  RESTORING, DELETING or ERROR. A volume bills ``size × VOLUME_USD_PER_GB_HOUR`` every minute.
* ``total_bill`` = (Σ of the hourly rates of the billed minutes) / 60, rounded half-even to 10
  decimal places; it never decreases. ``bill_per_minute`` = current hourly rate / 60, same
  rounding (null once terminated). ``total_up_time`` = whole minutes since creation (until
  termination), whatever the state.
* Every billed minute is also put in the bucket of the UTC hour (of emulated time) in which it
  ENDS, and added to the rate event (state change) in force when it ends. The billing history
  endpoints are served from those buckets and events, never from rate × time: an hour's
  ``incurred_bill`` is the rounded total at the hour's end minus the rounded total at the end of
  the hour before, so the hourly points of a resource add up to the growth of its ``total_bill``
  exactly, to the last decimal, over any span of whole hours (see ``history``).
* An ``exclude_billing`` resource (``POST /_sim/exclude-billing``) still meters and reports its
  ``total_bill``, but is not charged: the credit balance leaves it out.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from . import catalog
from .clock import US_PER_HOUR, US_PER_MINUTE, EmulatedClock
from .state import ACTIVE, HIBERNATED, SHUTOFF, STARTING, STOPPING, HourBucket, Meter, RateEvent, VmRecord, Volume, World

STARTING_CREDIT_USD = Decimal("500")
CREDIT_THRESHOLD_USD = Decimal("0")
_QUANTUM = Decimal("1e-10")
_FULL_RATE = frozenset({ACTIVE, SHUTOFF, STOPPING, STARTING})


def vm_usd_per_hour(vm: VmRecord) -> Decimal:
    if not vm.exists:
        return Decimal(0)
    if vm.status in _FULL_RATE:
        return catalog.FLAVORS[vm.flavor].usd_per_hour
    if vm.status == HIBERNATED:
        return catalog.HIBERNATED_USD_PER_HOUR
    return Decimal(0)


def volume_usd_per_hour(volume: Volume) -> Decimal:
    if volume.terminated_us is not None:
        return Decimal(0)
    return volume.size_gb * catalog.VOLUME_USD_PER_GB_HOUR


def _minutes_by(created_us: int, until_us: int, *, inclusive: bool) -> int:
    """How many billing minutes of a resource created at ``created_us`` end by ``until_us``."""
    span = until_us - created_us if inclusive else until_us - created_us - 1
    return max(0, span // US_PER_MINUTE)


def _accrue(meter: Meter, created_us: int, until_us: int, rate: Decimal, *, inclusive: bool, epoch_us: int,
            state: str | None) -> bool:
    due = _minutes_by(created_us, until_us, inclusive=inclusive)
    if due <= meter.minutes:
        return False
    base = epoch_us + created_us  # absolute microseconds (Unix) at which minute 0 "ends"
    k = meter.minutes + 1
    while k <= due:  # one bucket at a time: minutes k..last all end in the same UTC hour
        hour = (base + k * US_PER_MINUTE) // US_PER_HOUR
        last = min(due, ((hour + 1) * US_PER_HOUR - 1 - base) // US_PER_MINUTE)
        n = last - k + 1
        bucket = meter.hours.setdefault(hour, HourBucket())
        bucket.minutes += n
        bucket.usd_hour_minutes += rate * n
        bucket.usd_per_hour = rate
        if state is not None:
            bucket.state_minutes[state] = bucket.state_minutes.get(state, 0) + n
        k = last + 1
    meter.usd_hour_minutes += rate * (due - meter.minutes)
    meter.minutes = due
    return True


def accrue_all(world: World, until_us: int, *, inclusive: bool, epoch_us: int = 0) -> bool:
    """Bill every existing resource's minutes ending by ``until_us`` at its current rate."""
    changed = False
    for vm in world.live_vms():
        changed |= _accrue(vm.meter, vm.created_us, until_us, vm_usd_per_hour(vm), inclusive=inclusive,
                           epoch_us=epoch_us, state=vm.status)
    for volume in world.live_volumes():
        changed |= _accrue(volume.meter, volume.created_us, until_us, volume_usd_per_hour(volume),
                           inclusive=inclusive, epoch_us=epoch_us, state=None)
    return changed


def note_event(meter: Meter, at_us: int, event: str, usd_per_hour: Decimal) -> None:
    """Log a state change of a resource: the minutes ending from ``at_us`` on are billed under it."""
    meter.events.append(RateEvent(at_us, event, usd_per_hour, meter.usd_hour_minutes))


def total_usd(meter: Meter) -> Decimal:
    return usd_of(meter.usd_hour_minutes)


def usd_of(usd_hour_minutes: Decimal) -> Decimal:
    """A Σ of hourly rates over minutes as dollars, rounded as ``total_bill`` is."""
    return (usd_hour_minutes / 60).quantize(_QUANTUM, ROUND_HALF_EVEN)


def per_minute_usd(usd_per_hour: Decimal) -> Decimal:
    return (usd_per_hour / 60).quantize(_QUANTUM, ROUND_HALF_EVEN)


def usage_items(world: World, clock: EmulatedClock, *, deleted: bool, environment: str | None = None) -> list[dict[str, Any]]:
    """``GET /billing/billing/usage`` (``deleted=True``: the terminated resources)."""
    rows: list[tuple[int, dict[str, Any]]] = []
    for vm in world.vms.values():
        if (not vm.exists) == deleted and _env_matches(vm.environment, environment):
            rows.append((vm.created_us, _item(clock, world, vm, "vm", vm_usd_per_hour(vm))))
    for vol in world.volumes.values():
        if (vol.terminated_us is not None) == deleted and _env_matches(vol.environment, environment):
            rows.append((vol.created_us, _item(clock, world, vol, "volume", volume_usd_per_hour(vol))))
    return [item for _, item in sorted(rows, key=lambda row: row[0])]


def _env_matches(name: str, wanted: str | None) -> bool:
    return not wanted or wanted == name


def _item(clock: EmulatedClock, world: World, res: VmRecord | Volume, kind: str, usd_per_hour: Decimal) -> dict[str, Any]:
    active = res.terminated_us is None
    return {
        "resource_id": res.id,
        "resource_type": kind,
        "name": res.name,
        "organization_id": world.organization_id,
        "bill_per_minute": float(per_minute_usd(usd_per_hour)) if active else None,
        "total_bill": float(total_usd(res.meter)),
        "total_up_time": res.meter.minutes,
        "create_time": clock.iso_at(res.created_us),
        "terminate_time": clock.iso_at(res.terminated_us),
        "active": active,
        "exclude_billing": res.exclude_billing,
    }


def spent_usd(world: World) -> Decimal:
    """Everything charged so far: every resource's total but the ``exclude_billing`` ones."""
    resources = [*world.vms.values(), *world.volumes.values()]
    return sum((total_usd(r.meter) for r in resources if not r.exclude_billing), Decimal(0))


def credit_json(world: World) -> dict[str, Any]:
    """``GET /billing/user-credit/credit``: the starting credit minus everything billed so far."""
    credit = STARTING_CREDIT_USD - spent_usd(world)
    return {"credit": float(credit), "threshold": float(CREDIT_THRESHOLD_USD),
            "can_create_instance": credit > CREDIT_THRESHOLD_USD}
