"""The admin API at ``/_sim`` (no auth, not Hyperstack's): faults, reclaims, the clock, a dump.

* ``POST /_sim/faults`` a fault (see ``faults``); ``DELETE /_sim/faults`` clears them all;
  ``GET /_sim/faults`` lists the pending ones, every kind, and their documentation.
* ``POST /_sim/reclaim {"vm_id": ID, "mode": "error"|"vanish"}``: a spot VM taken back.
* ``POST /_sim/advance {"seconds": X}``: move the emulated clock X seconds ahead.
* ``POST /_sim/exclude-billing {"resource_type": "vm"|"volume", "resource_id": ID, "exclude": true}``:
  the resource's usage item says ``exclude_billing: true`` (false: back to normal) from now on,
  as for a resource the provider does not charge; it keeps metering, the credit leaves it out.
* ``GET /_sim/state``: everything, including a counter of ``/v1`` requests per ``METHOD path``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from . import billing, render
from . import faults as faults_module
from .account import bad_request, not_found
from .faults import FaultBook, FaultError, parse_fault
from .lifecycle import Cloud
from .routing import Request, Response, Router, ok


class Admin:
    def __init__(self, cloud: Cloud, faults: FaultBook, requests: Counter[str], *, ssh_port: int | None,
                 settings: dict[str, Any]) -> None:
        self.cloud = cloud
        self.faults = faults
        self.requests = requests
        self.ssh_port = ssh_port
        self.settings = settings

    def register(self, router: Router) -> None:
        router.add("POST", "/_sim/faults", self.add_fault)
        router.add("DELETE", "/_sim/faults", self.clear_faults)
        router.add("GET", "/_sim/faults", self.list_faults)
        router.add("POST", "/_sim/reclaim", self.reclaim)
        router.add("POST", "/_sim/advance", self.advance)
        router.add("GET", "/_sim/state", self.state)
        router.add("POST", "/_sim/exclude-billing", self.exclude_billing)

    def add_fault(self, req: Request) -> Response:
        try:
            fault = parse_fault(req.json())
        except FaultError as exc:
            raise bad_request(str(exc)) from None
        self.faults.add(fault)
        return ok("Fault queued", faults=self.faults.pending())

    def list_faults(self, req: Request) -> Response:
        return ok("Faults", faults=self.faults.pending(), kinds=list(faults_module.KINDS),
                  doc=faults_module.__doc__)

    def clear_faults(self, req: Request) -> Response:
        self.faults.clear()
        return ok("Faults cleared", faults=[])

    def reclaim(self, req: Request) -> Response:
        body = req.json_object()
        vm_id = body.get("vm_id")
        if not isinstance(vm_id, int) or isinstance(vm_id, bool):
            raise bad_request("vm_id must be a VM id (a whole number)")
        self.cloud.reclaim(vm_id, body.get("mode", "error"))
        return ok(f"Virtual machine {vm_id} reclaimed")

    def advance(self, req: Request) -> Response:
        seconds = req.json_object().get("seconds")
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds < 0:
            raise bad_request("seconds must be a number, 0 or more")
        self.cloud.advance(float(seconds))
        return ok("Clock advanced", **self._clock())

    def exclude_billing(self, req: Request) -> Response:
        body = req.json_object()
        kind, rid, exclude = body.get("resource_type"), body.get("resource_id"), body.get("exclude", True)
        if kind not in ("vm", "volume"):
            raise bad_request("resource_type must be 'vm' or 'volume'")
        if not isinstance(rid, int) or isinstance(rid, bool):
            raise bad_request("resource_id must be a resource id (a whole number)")
        if not isinstance(exclude, bool):
            raise bad_request("exclude must be true or false")
        world = self.cloud.world
        resource = (world.vms if kind == "vm" else world.volumes).get(rid)
        if resource is None:
            raise not_found(f"No {kind} with id {rid}")
        resource.exclude_billing = exclude
        self.cloud.dirty = True
        return ok(f"exclude_billing of {kind} {rid} is now {str(exclude).lower()}")

    def _clock(self) -> dict[str, Any]:
        now = self.cloud.clock.now_us()
        clock = self.cloud.clock
        return {"emulated_seconds": now / 1_000_000, "now": clock.iso_at(now),
                "now_unix": (clock.epoch_us + now) / 1_000_000, "time_scale": clock.time_scale}

    def state(self, req: Request) -> Response:
        cloud, world, clock = self.cloud, self.cloud.world, self.cloud.clock
        vms = []
        for vm in sorted(world.vms.values(), key=lambda v: v.id):
            item: dict[str, Any] = render.instance_json(vm, world, clock, ssh_port=self.ssh_port) if vm.exists else {
                "id": vm.id, "name": vm.name, "status": "DELETED"}
            item["pending"] = [{"at": clock.iso_at(due), "in_seconds": (due - clock.now_us()) / 1e6, "status": status}
                               for due, status in vm.pending]
            item["terminated_at"] = clock.iso_at(vm.terminated_us)
            item["bill"] = {"minutes": vm.meter.minutes, "total_usd": str(billing.total_usd(vm.meter)),
                            "usd_per_hour": str(billing.vm_usd_per_hour(vm)), "exclude_billing": vm.exclude_billing}
            vms.append(item)
        volumes = []
        for vol in sorted(world.volumes.values(), key=lambda v: v.id):
            volumes.append({**render.volume_json(vol, world, clock), "terminated_at": clock.iso_at(vol.terminated_us),
                            "bill": {"minutes": vol.meter.minutes, "total_usd": str(billing.total_usd(vol.meter)),
                                     "exclude_billing": vol.exclude_billing}})
        return ok(
            "Emulator state",
            clock=self._clock(),
            settings=self.settings,
            environments=[render.environment_json(e, clock) for e in world.environments.values()],
            keypairs=[render.keypair_json(k, world, clock) for k in world.keypairs.values()],
            volumes=volumes,
            vms=vms,
            counters=dict(world.counters),
            spent_usd=str(billing.spent_usd(world)),
            faults=self.faults.pending(),
            requests=dict(self.requests),
            state_dir=str(cloud.state_dir),
        )
