"""The emulated account's state machine: what each API call does and what time does after it.

``Cloud`` owns the ``World``, the clock and the delays. Every call first brings the world up to
the clock's now (``sync``): due status steps are applied in time order, and billing minutes are
accrued between them (see ``billing``), so an answer is always consistent with emulated time
however rarely anything polled. Calls that break a rule raise ``account.CloudError``.

Status sequences (delays in emulated seconds)::

    create   CREATING (create/3) → BUILD (2·create/3) → ACTIVE
    hibernate  ACTIVE → HIBERNATING (hibernate) → HIBERNATED
    restore    HIBERNATED → RESTORING (restore) → ACTIVE   (or back to HIBERNATED: injected fault)
    stop       ACTIVE → STOPPING (stop) → SHUTOFF;  start  SHUTOFF → STARTING (start) → ACTIVE
    delete     anything but CREATING/BUILD → DELETING (delete) → gone (404)

What the machine outside must do about a change (start boot scripts, kill a node's processes,
wipe its ephemeral disk, remove its directory) is queued as ``Effect``s for the server to apply.
Environments, key pairs and volumes are in ``account``, the base class.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from . import billing, catalog
from .account import Account, bad_request, check_name, not_found, security_rule
from .clock import EmulatedClock, seconds_to_us
from .state import (
    ACTIVE,
    BUILD,
    CREATING,
    DELETING,
    ERROR,
    GONE,
    HIBERNATED,
    HIBERNATING,
    RESTORING,
    SHUTOFF,
    STARTING,
    STOPPING,
    VmRecord,
    Volume,
    World,
    load,
)

EffectKind = Literal["boot", "kill", "wipe_ephemeral", "remove_node"]
MAX_COUNT = 20
ID_KINDS = ("vm", "volume", "keypair", "environment", "attachment", "security_rule")
NODE_SUBDIRS = ("boot", "run", "log", "ephemeral")  # made at create; see ``processes``


@dataclass(frozen=True, slots=True)
class Delays:
    """How long each transition takes, in emulated seconds."""

    create_s: float = 20.0
    hibernate_s: float = 10.0
    restore_s: float = 15.0
    delete_s: float = 3.0
    stop_s: float = 5.0
    start_s: float = 10.0


@dataclass(frozen=True, slots=True)
class Effect:
    kind: EffectKind
    vm_id: int
    node_dir: str


class Cloud(Account):
    def __init__(self, state_dir: Path, world: World, clock: EmulatedClock, delays: Delays) -> None:
        super().__init__(state_dir, world, clock)
        self.delays = delays
        self._effects: list[Effect] = []
        # --real-nodes: the address a new VM's node will have (see ``real_nodes``); None: 127.0.0.1
        self.node_address: Callable[[Path], str] | None = None

    @classmethod
    def open(cls, state_dir: Path, delays: Delays, *, time_scale: float = 1.0, id_offset: int = 0,
             organization_id: int = 1) -> Cloud:
        """The account saved in ``state_dir``, or a fresh one with the default environments.

        ``id_offset`` and ``organization_id`` shape a fresh account only (a saved one keeps its
        own): with an offset of N, its first VM, volume, key pair... has id N + 1, so a second
        account's resources never share ids with the first's.
        """
        state_dir = state_dir.resolve()
        saved = load(state_dir)
        if saved is None:
            world = World(counters={kind: id_offset for kind in ID_KINDS} if id_offset else {},
                          organization_id=organization_id)
            cloud = cls(state_dir, world, EmulatedClock(time_scale=time_scale), delays)
            for name, region in catalog.DEFAULT_ENVIRONMENTS:
                cloud.create_environment(name, region)
        else:
            world, clock = saved
            cloud = cls(state_dir, world, EmulatedClock.resume(clock, time_scale=time_scale), delays)
        cloud.dirty = True
        cloud.sync()
        return cloud

    # -- time ----------------------------------------------------------------------------------

    def sync(self) -> None:
        """Apply every step and billing minute due by now."""
        self._advance_to(self.clock.now_us())

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.dirty = True
        self.sync()

    def _advance_to(self, until_us: int) -> None:
        world = self.world
        while True:
            due = [vm.pending[0][0] for vm in world.live_vms() if vm.pending]
            step_at = min(due, default=None)
            if step_at is None or step_at > until_us:
                self.dirty |= billing.accrue_all(world, until_us, inclusive=True, epoch_us=self.clock.epoch_us)
                break
            # minutes ending before the step are billed at the old rates, the one ending at it at the new
            self.dirty |= billing.accrue_all(world, step_at, inclusive=False, epoch_us=self.clock.epoch_us)
            for vm in sorted(world.live_vms(), key=lambda v: v.id):
                if vm.pending and vm.pending[0][0] == step_at:
                    _, status = vm.pending.pop(0)
                    self._enter(vm, status, step_at)
            self.dirty = True
        world.synced_us = max(world.synced_us, until_us)

    def _enter(self, vm: VmRecord, status: str, at_us: int) -> None:
        if status == GONE:
            self._terminate(vm, at_us)
            return
        vm.status = status
        self._note(vm, at_us)
        if status == ACTIVE:
            vm.ip_retained = False
            self._effect("boot", vm)

    def _note(self, vm: VmRecord, at_us: int) -> None:
        """Log the VM's new status and rate for billing events (see ``billing.note_event``)."""
        billing.note_event(vm.meter, at_us, vm.status if vm.exists else "DELETED", billing.vm_usd_per_hour(vm))

    def _terminate(self, vm: VmRecord, at_us: int) -> None:
        vm.terminated_us = at_us
        vm.pending = []
        self._note(vm, at_us)
        for vid in vm.volume_ids:
            volume = self.world.volumes.get(vid)
            if volume is not None and volume.attached_to == vm.id:
                volume.attached_to = volume.attachment_id = volume.attached_us = None
        self._effect("remove_node", vm)

    def _effect(self, kind: EffectKind, vm: VmRecord) -> None:
        self._effects.append(Effect(kind, vm.id, vm.node_dir))

    def drain_effects(self) -> list[Effect]:
        effects, self._effects = self._effects, []
        return effects

    def _schedule(self, vm: VmRecord, status: str, steps: list[tuple[float, str]]) -> None:
        now = self.now_us
        vm.status = status
        self._note(vm, now)
        vm.pending = [(now + seconds_to_us(after_s), step) for after_s, step in steps]
        self.dirty = True
        self._advance_to(now)  # zero delays complete at once

    # -- reads ---------------------------------------------------------------------------------

    def vm(self, vm_id: int) -> VmRecord:
        vm = self.world.vms.get(vm_id)
        if vm is None or not vm.exists:
            raise not_found(f"Virtual machine with id {vm_id} not found")
        return vm

    def list_vms(self, *, search: str | None, environment: str | None, exact_environment: bool) -> list[VmRecord]:
        out = []
        for vm in sorted(self.world.live_vms(), key=lambda v: v.id):
            if search and search.lower() not in vm.name.lower() and search != str(vm.id):
                continue
            if environment:
                if exact_environment and vm.environment != environment:
                    continue
                if not exact_environment and environment.lower() not in vm.environment.lower():
                    continue
            out.append(vm)
        return out

    def name_taken(self, name: str) -> bool:
        return any(vm.name == name for vm in self.world.live_vms())

    def attach_volumes(self, vm_id: int, volume_ids: Any) -> list[Volume]:
        vm = self.vm(vm_id)
        if not isinstance(volume_ids, list) or not volume_ids or not all(isinstance(i, int) for i in volume_ids):
            raise bad_request("volume_ids must be a non-empty list of volume ids")
        volumes = [self.volume(i) for i in volume_ids]
        for volume in volumes:
            self._check_attachable(volume, vm)
        for volume in volumes:
            self._attach(volume, vm)
        return volumes

    # -- VMs -------------------------------------------------------------------------------------

    def create_vms(self, body: dict[str, Any]) -> list[VmRecord]:
        """``POST /core/virtual-machines``. Names need not be unique: like Hyperstack, no idempotency."""
        for field in ("name", "environment_name", "flavor_name", "key_name", "count"):
            if body.get(field) in (None, ""):
                raise bad_request(f"{field} is required")
        name, count = body["name"], body["count"]
        check_name(name, "virtual machine")
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_COUNT:
            raise bad_request(f"count must be a whole number between 1 and {MAX_COUNT}")
        env = self._environment(body["environment_name"])
        flavor = catalog.FLAVORS.get(body["flavor_name"])
        if flavor is None:
            raise bad_request(f"Flavor {body['flavor_name']!r} does not exist; flavors: {', '.join(catalog.FLAVORS)}")
        key_name = body["key_name"]
        if not any(k.name == key_name and k.environment == env.name for k in self.world.keypairs.values()):
            raise bad_request(f"Key pair {key_name!r} not found in environment {env.name!r}")
        image = body.get("image_name") or catalog.DEFAULT_IMAGE
        if image not in catalog.IMAGE_NAMES:
            raise bad_request(f"Image {image!r} does not exist")
        volume = self._volume_by_name(body.get("volume_name"), env.name, count)
        labels, rules = body.get("labels") or [], body.get("security_rules") or []
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise bad_request("labels must be a list of strings")
        if not isinstance(rules, list):
            raise bad_request("security_rules must be a list")
        checked_rules = [security_rule(rule) for rule in rules]
        self.sync()
        vms = []
        for index in range(count):
            vm_id = self.world.next_id("vm")
            node_dir = self.state_dir / "nodes" / str(vm_id)
            for sub in NODE_SUBDIRS:
                (node_dir / sub).mkdir(parents=True, exist_ok=True)
            vm = VmRecord(
                id=vm_id,
                name=name if count == 1 else f"{name}-{index + 1}",
                environment=env.name,
                flavor=flavor.name,
                image=image,
                key_name=key_name,
                created_us=self.now_us,
                engine_port=self._free_port(),
                node_dir=str(node_dir),
                assign_floating_ip=bool(body.get("assign_floating_ip", False)),
                user_data=body.get("user_data"),
                callback_url=body.get("callback_url"),
                labels=list(labels),
                address=self.node_address(node_dir) if self.node_address else None,
            )
            vm.security_rules = [self._rule_json(rule) for rule in checked_rules]
            self.world.vms[vm_id] = vm
            if volume is not None:
                self._attach(volume, vm)
            vms.append(vm)
            create_s = self.delays.create_s
            self._schedule(vm, CREATING, [(create_s / 3, BUILD), (create_s, ACTIVE)])
        return vms

    def _free_port(self) -> int:
        taken = {vm.engine_port for vm in self.world.live_vms()}
        while True:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            if port not in taken:
                return port

    def _rule_json(self, rule: dict[str, Any]) -> dict[str, Any]:
        return {"id": self.world.next_id("security_rule"), **rule, "status": "ACTIVE",
                "created_at": self.clock.iso_at(self.now_us)}

    def add_security_rule(self, vm_id: int, body: Any) -> dict[str, Any]:
        vm = self.vm(vm_id)
        rule = self._rule_json(security_rule(body))
        vm.security_rules.append(rule)
        self.dirty = True
        return rule

    def delete_vm(self, vm_id: int) -> None:
        self.sync()
        vm = self.vm(vm_id)
        if vm.status in (CREATING, BUILD):
            raise bad_request("Cannot delete the virtual machine while the VM is being created: try again later")
        if vm.status == DELETING:
            return
        self._effect("kill", vm)
        self._schedule(vm, DELETING, [(self.delays.delete_s, GONE)])

    def hibernate(self, vm_id: int, *, retain_ip: bool) -> None:
        self.sync()
        vm = self.vm(vm_id)
        if not catalog.FLAVORS[vm.flavor].can_hibernate:
            raise bad_request(f"Flavor {vm.flavor} does not support hibernation")
        if vm.status != ACTIVE:
            raise bad_request(f"Cannot hibernate a virtual machine in status {vm.status}: it must be ACTIVE")
        vm.ip_retained = retain_ip
        self._effect("kill", vm)
        self._effect("wipe_ephemeral", vm)
        self._schedule(vm, HIBERNATING, [(self.delays.hibernate_s, HIBERNATED)])

    def check_restorable(self, vm_id: int) -> VmRecord:
        self.sync()
        vm = self.vm(vm_id)
        if vm.status != HIBERNATED:
            raise bad_request(f"Cannot restore a virtual machine in status {vm.status}: it must be HIBERNATED")
        return vm

    def restore(self, vm_id: int, *, revert: bool = False) -> None:
        """Restore; ``revert`` (an injected capacity fault) accepts it but ends back in HIBERNATED."""
        vm = self.check_restorable(vm_id)
        self._schedule(vm, RESTORING, [(self.delays.restore_s, HIBERNATED if revert else ACTIVE)])

    def stop(self, vm_id: int) -> None:
        self.sync()
        vm = self.vm(vm_id)
        if vm.status != ACTIVE:
            raise bad_request(f"Cannot stop a virtual machine in status {vm.status}: it must be ACTIVE")
        self._effect("kill", vm)
        self._schedule(vm, STOPPING, [(self.delays.stop_s, SHUTOFF)])

    def start(self, vm_id: int) -> None:
        self.sync()
        vm = self.vm(vm_id)
        if vm.status != SHUTOFF:
            raise bad_request(f"Cannot start a virtual machine in status {vm.status}: it must be SHUTOFF")
        self._schedule(vm, STARTING, [(self.delays.start_s, ACTIVE)])

    def reclaim(self, vm_id: int, mode: str) -> None:
        """A spot VM taken back: ``error`` leaves it in ERROR, ``vanish`` makes it disappear."""
        if mode not in ("error", "vanish"):
            raise bad_request("mode must be 'error' or 'vanish'")
        self.sync()
        vm = self.vm(vm_id)
        self._effect("kill", vm)
        if mode == "error":
            self._schedule(vm, ERROR, [])
        else:
            self._terminate(vm, self.now_us)
            self.dirty = True
