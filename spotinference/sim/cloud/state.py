"""The emulated account: environments, key pairs, volumes and VMs, and their JSON persistence.

Everything lives in one ``World`` saved to ``{state_dir}/state.json`` (written to a temporary
file, then renamed over the old one, so a crash never leaves half a file). Terminated VMs and
volumes stay in the world, marked by ``terminated_us``, because billing still reports them.

A VM's future is its ``pending`` list: ``(due_us, status)`` steps applied in order by
``lifecycle`` as the emulated clock passes them (``GONE`` is the step that ends a delete).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from decimal import Decimal
from pathlib import Path
from typing import Any

# VM statuses, as Hyperstack spells them
CREATING, BUILD, ACTIVE = "CREATING", "BUILD", "ACTIVE"
HIBERNATING, HIBERNATED, RESTORING = "HIBERNATING", "HIBERNATED", "RESTORING"
STOPPING, SHUTOFF, STARTING = "STOPPING", "SHUTOFF", "STARTING"
DELETING, ERROR = "DELETING", "ERROR"
GONE = "GONE"  # internal: the VM no longer exists (never shown)

#: what ``power_state`` and ``vm_state`` say in each status
POWER_STATE = {
    CREATING: "SHUTDOWN", BUILD: "SHUTDOWN", ACTIVE: "RUNNING", HIBERNATING: "RUNNING",
    HIBERNATED: "SHUTDOWN", RESTORING: "SHUTDOWN", STOPPING: "RUNNING", SHUTOFF: "SHUTDOWN",
    STARTING: "SHUTDOWN", DELETING: "SHUTDOWN", ERROR: "SHUTDOWN",
}
VM_STATE = {
    CREATING: "building", BUILD: "building", ACTIVE: "active", HIBERNATING: "active",
    HIBERNATED: "shelved_offloaded", RESTORING: "shelved_offloaded", STOPPING: "active",
    SHUTOFF: "stopped", STARTING: "stopped", DELETING: "deleting", ERROR: "error",
}

STATE_FILE = "state.json"
FORMAT_VERSION = 1


@dataclass
class HourBucket:
    """The billed minutes that ENDED in one UTC hour of emulated time, and what they cost.

    ``minutes`` counts every minute of existence that ended in the hour (like ``total_up_time``);
    ``state_minutes`` splits them by the VM status in force when each ended; ``usd_hour_minutes``
    is the same Σ of $/h rates as the meter's; ``usd_per_hour`` the rate of the last one.
    """

    minutes: int = 0
    usd_hour_minutes: Decimal = Decimal(0)
    state_minutes: dict[str, int] = field(default_factory=dict)
    usd_per_hour: Decimal = Decimal(0)

    def to_json(self) -> dict[str, Any]:
        return {"minutes": self.minutes, "usd_hour_minutes": str(self.usd_hour_minutes),
                "state_minutes": dict(self.state_minutes), "usd_per_hour": str(self.usd_per_hour)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HourBucket:
        return cls(minutes=int(data["minutes"]), usd_hour_minutes=Decimal(data["usd_hour_minutes"]),
                   state_minutes={str(k): int(v) for k, v in data.get("state_minutes", {}).items()},
                   usd_per_hour=Decimal(data.get("usd_per_hour", "0")))


@dataclass
class RateEvent:
    """A change of what a resource is billed: from ``start_us`` on, ``usd_per_hour`` in ``event``.

    ``usd_hour_minutes_before`` is the meter's Σ when the event began, so an event's cost is the
    difference of two rounded totals and the costs of all events add up to ``total_bill`` exactly.
    """

    start_us: int
    event: str
    usd_per_hour: Decimal
    usd_hour_minutes_before: Decimal

    def to_json(self) -> dict[str, Any]:
        return {"start_us": self.start_us, "event": self.event, "usd_per_hour": str(self.usd_per_hour),
                "usd_hour_minutes_before": str(self.usd_hour_minutes_before)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RateEvent:
        return cls(int(data["start_us"]), str(data["event"]), Decimal(data["usd_per_hour"]),
                   Decimal(data["usd_hour_minutes_before"]))


@dataclass
class Meter:
    """A resource's bill: whole minutes elapsed, and the sum of the hourly rates billed in them.

    ``hours`` (UTC hour index since the Unix epoch -> bucket) and ``events`` (rate changes, oldest
    first) are the same minutes seen by hour and by state: billing history is served from them.
    A state saved before they existed loads with both empty (its history starts then).
    """

    minutes: int = 0
    usd_hour_minutes: Decimal = Decimal(0)  # Σ over billed minutes of the $/h rate in force
    hours: dict[int, HourBucket] = field(default_factory=dict)
    events: list[RateEvent] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"minutes": self.minutes, "usd_hour_minutes": str(self.usd_hour_minutes),
                "hours": {str(h): b.to_json() for h, b in self.hours.items()},
                "events": [e.to_json() for e in self.events]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Meter:
        return cls(minutes=int(data["minutes"]), usd_hour_minutes=Decimal(data["usd_hour_minutes"]),
                   hours={int(h): HourBucket.from_json(b) for h, b in data.get("hours", {}).items()},
                   events=[RateEvent.from_json(e) for e in data.get("events", [])])


@dataclass
class Environment:
    id: int
    name: str
    region: str
    created_us: int


@dataclass
class KeyPair:
    id: int
    name: str
    environment: str
    public_key: str
    fingerprint: str
    created_us: int


@dataclass
class Volume:
    id: int
    name: str
    environment: str
    size_gb: int
    volume_type: str
    created_us: int
    attached_to: int | None = None
    attachment_id: int | None = None
    attached_us: int | None = None
    terminated_us: int | None = None
    meter: Meter = field(default_factory=Meter)
    exclude_billing: bool = False  # flagged by POST /_sim/exclude-billing


@dataclass
class VmRecord:
    id: int
    name: str
    environment: str
    flavor: str
    image: str
    key_name: str
    created_us: int
    engine_port: int
    node_dir: str
    status: str = CREATING
    pending: list[tuple[int, str]] = field(default_factory=list)
    assign_floating_ip: bool = False
    ip_retained: bool = False  # hibernated with retain_ip=true
    user_data: str | None = None
    callback_url: str | None = None
    labels: list[str] = field(default_factory=list)
    security_rules: list[dict[str, Any]] = field(default_factory=list)
    volume_ids: list[int] = field(default_factory=list)
    terminated_us: int | None = None
    meter: Meter = field(default_factory=Meter)
    exclude_billing: bool = False  # flagged by POST /_sim/exclude-billing
    address: str | None = None  # a real node's veth address (--real-nodes); None: 127.0.0.1

    @property
    def exists(self) -> bool:
        return self.terminated_us is None


@dataclass
class World:
    """The whole account. ``synced_us`` is the emulated time transitions and bills are applied up to."""

    environments: dict[str, Environment] = field(default_factory=dict)
    keypairs: dict[int, KeyPair] = field(default_factory=dict)
    volumes: dict[int, Volume] = field(default_factory=dict)
    vms: dict[int, VmRecord] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    synced_us: int = 0
    organization_id: int = 1

    def next_id(self, kind: str) -> int:
        self.counters[kind] = self.counters.get(kind, 0) + 1
        return self.counters[kind]

    def live_vms(self) -> list[VmRecord]:
        return [vm for vm in self.vms.values() if vm.exists]

    def live_volumes(self) -> list[Volume]:
        return [v for v in self.volumes.values() if v.terminated_us is None]

    # -- JSON ----------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "environments": [asdict(e) for e in self.environments.values()],
            "keypairs": [asdict(k) for k in self.keypairs.values()],
            "volumes": [_with_meter(v) for v in self.volumes.values()],
            "vms": [_with_meter(vm) for vm in self.vms.values()],
            "counters": dict(self.counters),
            "synced_us": self.synced_us,
            "organization_id": self.organization_id,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> World:
        world = cls(counters={k: int(v) for k, v in data["counters"].items()}, synced_us=int(data["synced_us"]),
                    organization_id=int(data.get("organization_id", 1)))
        for item in data["environments"]:
            env = _build(Environment, item)
            world.environments[env.name] = env
        for item in data["keypairs"]:
            key = _build(KeyPair, item)
            world.keypairs[key.id] = key
        for item in data["volumes"]:
            vol = _build(Volume, item)
            world.volumes[vol.id] = vol
        for item in data["vms"]:
            vm = _build(VmRecord, item)
            vm.pending = [(int(due), str(status)) for due, status in vm.pending]
            world.vms[vm.id] = vm
        return world


def _with_meter(obj: Volume | VmRecord) -> dict[str, Any]:
    data = asdict(obj)
    data["meter"] = obj.meter.to_json()
    return data


def _build(kind: type, data: dict[str, Any]) -> Any:
    known = {f.name for f in fields(kind)}
    values = {k: v for k, v in data.items() if k in known}
    if "meter" in values:
        values["meter"] = Meter.from_json(values["meter"])
    return kind(**values)


def save(state_dir: Path, world: World, clock: dict[str, Any]) -> None:
    """Write ``state.json`` atomically: a temporary file in the same directory, then a rename."""
    state_dir.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"version": FORMAT_VERSION, "clock": clock, "world": world.to_json()}, indent=1)
    tmp = state_dir / f".{STATE_FILE}.{os.getpid()}.tmp"
    with tmp.open("w") as handle:
        handle.write(body)
    os.replace(tmp, state_dir / STATE_FILE)


def load(state_dir: Path) -> tuple[World, dict[str, Any]] | None:
    """The saved world and clock, or None when this state directory is new."""
    path = state_dir / STATE_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return World.from_json(data["world"]), data["clock"]
