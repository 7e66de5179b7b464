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
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from . import catalog
from .clock import US_PER_MINUTE, EmulatedClock
from .state import ACTIVE, HIBERNATED, SHUTOFF, STARTING, STOPPING, Meter, VmRecord, Volume, World

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


def _accrue(meter: Meter, created_us: int, until_us: int, rate: Decimal, *, inclusive: bool) -> bool:
    due = _minutes_by(created_us, until_us, inclusive=inclusive)
    if due <= meter.minutes:
        return False
    meter.usd_hour_minutes += rate * (due - meter.minutes)
    meter.minutes = due
    return True


def accrue_all(world: World, until_us: int, *, inclusive: bool) -> bool:
    """Bill every existing resource's minutes ending by ``until_us`` at its current rate."""
    changed = False
    for vm in world.live_vms():
        changed |= _accrue(vm.meter, vm.created_us, until_us, vm_usd_per_hour(vm), inclusive=inclusive)
    for volume in world.live_volumes():
        changed |= _accrue(volume.meter, volume.created_us, until_us, volume_usd_per_hour(volume), inclusive=inclusive)
    return changed


def total_usd(meter: Meter) -> Decimal:
    return (meter.usd_hour_minutes / 60).quantize(_QUANTUM, ROUND_HALF_EVEN)


def per_minute_usd(usd_per_hour: Decimal) -> Decimal:
    return (usd_per_hour / 60).quantize(_QUANTUM, ROUND_HALF_EVEN)


def usage_items(world: World, clock: EmulatedClock, *, deleted: bool, environment: str | None = None) -> list[dict[str, Any]]:
    """``GET /billing/billing/usage`` (``deleted=True``: the terminated resources)."""
    rows: list[tuple[int, dict[str, Any]]] = []
    for vm in world.vms.values():
        if (not vm.exists) == deleted and _env_matches(vm.environment, environment):
            rows.append((vm.created_us, _item(clock, vm.id, "vm", vm.name, vm.created_us, vm.terminated_us,
                                               vm.meter, vm_usd_per_hour(vm))))
    for vol in world.volumes.values():
        if (vol.terminated_us is not None) == deleted and _env_matches(vol.environment, environment):
            rows.append((vol.created_us, _item(clock, vol.id, "volume", vol.name, vol.created_us, vol.terminated_us,
                                                vol.meter, volume_usd_per_hour(vol))))
    return [item for _, item in sorted(rows, key=lambda row: row[0])]


def _env_matches(name: str, wanted: str | None) -> bool:
    return not wanted or wanted == name


def _item(clock: EmulatedClock, rid: int, kind: str, name: str, created_us: int, terminated_us: int | None,
          meter: Meter, usd_per_hour: Decimal) -> dict[str, Any]:
    active = terminated_us is None
    return {
        "resource_id": rid,
        "resource_type": kind,
        "name": name,
        "organization_id": 1,
        "bill_per_minute": float(per_minute_usd(usd_per_hour)) if active else None,
        "total_bill": float(total_usd(meter)),
        "total_up_time": meter.minutes,
        "create_time": clock.iso_at(created_us),
        "terminate_time": clock.iso_at(terminated_us),
        "active": active,
        "exclude_billing": False,
    }


def spent_usd(world: World) -> Decimal:
    return sum((total_usd(r.meter) for r in [*world.vms.values(), *world.volumes.values()]), Decimal(0))


def credit_json(world: World) -> dict[str, Any]:
    """``GET /billing/user-credit/credit``: the starting credit minus everything billed so far."""
    credit = STARTING_CREDIT_USD - spent_usd(world)
    return {"credit": float(credit), "threshold": float(CREDIT_THRESHOLD_USD),
            "can_create_instance": credit > CREDIT_THRESHOLD_USD}
