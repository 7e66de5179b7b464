"""The lifecycle commands: up, wake, down (hibernate or terminate).

Every operation re-reads the provider and moves each node one step at a time toward the goal,
so it is safe to run twice and safe to interrupt: a Ctrl-C leaves VMs in whatever state the
provider has, and the next run starts from there. Nodes of a tier are handled in parallel.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from ..config import Tier
from ..errors import InputError, SpotError
from ..nodes.bootstrap import Bootstrap
from ..nodes.engine_unit import EnginePlan
from ..nodes.errors import NodeError
from ..providers import InsufficientCapacityError, Provider, Vm, VmPhase
from .connect import engine_bind_host, engine_port, layout_for
from .context import FleetContext
from .engine_keys import engine_key
from .locks import tier_lock
from .naming import belongs_to, node_name, tier_prefix
from .preflight import check_tier, firewall_rules, prepare
from .states import NodeState, node_state

UP_DEADLINE_S = 3600.0  # a fresh node: create, boot, install vLLM, load weights


class FleetTimeoutError(SpotError):
    exit_code = 7
    http_status = 504


class NodeLostError(NodeError):
    """A node's VM was taken back by the provider (a spot reclaim): ERROR, or gone."""


class Fleet:
    def __init__(self, context: FleetContext) -> None:
        self.ctx = context

    # -- up and wake -------------------------------------------------------------------------

    def up(self, tier_name: str, *, nodes: int | None = None) -> list[str]:
        """Create (or restore) and bootstrap the tier's nodes until each serves; their names."""
        tier = self.ctx.tier(tier_name)
        count = nodes if nodes is not None else max(tier.min_nodes, 1)
        if not 1 <= count <= tier.max_nodes:
            raise InputError(f"--nodes {count} is out of range for tier {tier.name}: expected 1..{tier.max_nodes} (max_nodes)")
        provider = self.ctx.provider(tier.provider)
        check_tier(self.ctx.settings, tier, provider)
        self.ctx.records.decision(tier=tier.name, reason=f"spot up: {count} node(s)")
        indexes = range(1, count + 1)
        return self._each(tier, indexes, lambda i: self._bring_up(tier, provider, i, UP_DEADLINE_S, "spot up"))

    def wake(self, tier_name: str, *, reason: str = "spot wake", replace_lost: bool = True) -> list[str]:
        """Restore the tier's hibernated nodes and wait until they serve (a tier with no node gets
        its first one, as `up` would). Single flight: only a HIBERNATED VM is ever restored.

        ``replace_lost=False`` (the gateway, which has a fallback to turn to) raises
        NodeLostError instead of replacing a VM the provider took back (ERROR, or gone)."""
        tier = self.ctx.tier(tier_name)
        provider = self.ctx.provider(tier.provider)
        existing = self._tier_vms(tier, provider)
        if not replace_lost:
            self._check_not_lost(tier, existing)
        if not existing:
            return self.up(tier.name)
        self.ctx.records.decision(tier=tier.name, reason=reason)
        indexes = sorted(int(vm.name.rsplit("-", 1)[1]) for vm in existing)
        return self._each(tier, indexes, lambda i: self._bring_up(tier, provider, i, float(tier.wake_timeout_s), reason))

    def _check_not_lost(self, tier: Tier, existing: list[Vm]) -> None:
        failed = [vm for vm in existing if vm.phase is VmPhase.ERROR]
        if failed:
            raise NodeLostError(f"node {failed[0].name} is in {failed[0].status} (spot VM reclaimed?)", node=failed[0].name)
        names = {vm.name for vm in existing}
        for record in self.ctx.records.nodes().values():
            if record.tier == tier.name and record.name not in names and record.state not in (NodeState.TERMINATED,):
                raise NodeLostError(f"node {record.name} is gone at the provider (spot VM reclaimed?)", node=record.name)

    def _bring_up(self, tier: Tier, provider: Provider, index: int, deadline_s: float, reason: str) -> str:
        ctx = self.ctx
        name = node_name(tier.name, index)
        started = ctx.monotonic()
        vm = provider.find_vm(name)
        state = node_state(vm, engine_healthy=ctx.engine_healthy(vm, tier) if vm else False)
        ctx.note(tier, name, vm, state, f"{reason}: found")
        recreated = bootstrapped = restore_called = restore_seen = False
        while True:
            if vm is None:
                def own(resource_type: str, resource_id: str, resource_name: str | None) -> None:
                    ctx.records.own(provider=tier.provider, resource_type=resource_type, resource_id=resource_id,
                                    name=resource_name, tier=tier.name)

                spec = prepare(ctx.settings, tier, provider, index, own)
                with tier_lock(ctx.settings.home, tier.name):
                    # create_vm looks the name up first: a second process finds the first's VM.
                    ctx.progress(tier.name, name, f"creating {tier.flavor} in {tier.environment}")
                    vm = provider.create_vm(spec)
                own("vm", vm.provider_id, vm.name)
                ctx.note(tier, name, vm, NodeState.PROVISIONING, reason)
            elif vm.phase is VmPhase.ERROR:
                if recreated:
                    raise NodeError(f"node {name} went to ERROR again after being recreated ({vm.status})", node=name,
                                    hint="check the provider's console; `spot down --terminate` cleans up")
                ctx.note(tier, name, vm, NodeState.FAILED, f"VM in {vm.status} (reclaimed?): replacing it")
                provider.delete_vm(vm.provider_id)
                recreated = True
            elif vm.phase is VmPhase.HIBERNATED and restore_called and not restore_seen:
                pass  # the provider has not started our restore yet: wait, never restore twice
            elif vm.phase is VmPhase.HIBERNATED:
                if restore_called:
                    # Accepted, then back to HIBERNATED: the provider could not place it.
                    raise InsufficientCapacityError(
                        f"the restore of node {name} did not complete: the VM went back to {vm.status}",
                        provider=tier.provider, hint="no GPU capacity for this restore now: try later or a fallback tier",
                    )
                with tier_lock(ctx.settings.home, tier.name):
                    # Single flight across processes: restore only a VM still HIBERNATED under the lock.
                    current = provider.get_vm(vm.provider_id)
                    if current is not None and current.phase is VmPhase.HIBERNATED:
                        ctx.progress(tier.name, name, "restoring from hibernation")
                        provider.restore_vm(vm.provider_id)
                        restore_called = True
                ctx.note(tier, name, vm, NodeState.WAKING, reason)
            elif vm.phase is VmPhase.STOPPED:
                raise NodeError(f"node {name} is shut off ({vm.status}) and bills in full", node=name,
                                hint=f"`spot down {tier.name} --terminate` then `spot up {tier.name}`")
            elif vm.phase is VmPhase.RUNNING and vm.ready:
                if not bootstrapped:
                    self._bootstrap(tier, provider, vm)
                    bootstrapped = True
                if ctx.engine_healthy(vm, tier):
                    ctx.note(tier, name, vm, NodeState.SERVING, reason)
                    return name
            elapsed = ctx.monotonic() - started
            if elapsed > deadline_s:
                current = node_state(vm, engine_healthy=False, last_state=state)
                raise FleetTimeoutError(
                    f"node {name} is still {current.value} ({vm.status if vm else 'gone'}) after {elapsed:.0f} s",
                    hint=f"run the command again to keep waiting, or `spot logs {name}`",
                )
            ctx.sleep(ctx.poll_interval_s)
            vm = provider.get_vm(vm.provider_id) if vm is not None else None
            restore_seen = restore_seen or (vm is not None and vm.phase is VmPhase.RESTORING)
            if vm is not None:
                last = ctx.records.nodes().get(name)
                state = node_state(vm, engine_healthy=False, last_state=last.state if last else None)
                if vm.phase is not VmPhase.RUNNING or not vm.ready:
                    ctx.note(tier, name, vm, state, reason)

    def _bootstrap(self, tier: Tier, provider: Provider, vm: Vm) -> None:
        ctx = self.ctx
        for rule in firewall_rules(ctx.settings, tier, vm):
            provider.add_firewall_rule(vm.provider_id, rule)
        last = ctx.records.nodes().get(vm.name)
        waking = last is not None and last.state in (NodeState.WAKING, NodeState.HIBERNATED)
        if waking:
            # Splits a wake into the provider's restore and the engine's start in the event log.
            ctx.records.decision(tier=tier.name, node=vm.name, reason="VM restored: engine starting")
        else:
            ctx.note(tier, vm.name, vm, NodeState.BOOTSTRAPPING, "VM ready: starting the engine")
        plan = EnginePlan(
            tier=tier, layout=layout_for(vm), host=engine_bind_host(vm), port=engine_port(vm, tier),
            api_key=engine_key(ctx.settings.home, vm.name),
        )
        with ctx.transport(vm, tier) as transport:
            result = Bootstrap(transport, plan, progress=lambda m: ctx.progress(tier.name, vm.name, m)).run()
        if result.changed_anything:
            ctx.progress(tier.name, vm.name, "bootstrap: " + "; ".join(result.changed))

    # -- down --------------------------------------------------------------------------------

    def down(self, tier_name: str, *, terminate: bool = False, reason: str | None = None) -> list[str]:
        """Hibernate every node of the tier (or delete them with ``terminate``) and wait for it."""
        tier = self.ctx.tier(tier_name)
        if not terminate and not tier.hibernate:
            raise InputError(f"tier {tier.name} does not hibernate (hibernate = false)",
                             hint=f"`spot down {tier.name} --terminate` deletes its nodes instead")
        provider = self.ctx.provider(tier.provider)
        vms = self._tier_vms(tier, provider)
        why = reason or ("spot down --terminate" if terminate else "spot down")
        self.ctx.records.decision(tier=tier.name, reason=why, detail={"nodes": [vm.name for vm in vms]})
        indexes = sorted(int(vm.name.rsplit("-", 1)[1]) for vm in vms)
        action = self._terminate if terminate else self._hibernate
        return self._each(tier, indexes, lambda i: action(tier, provider, i, why))

    def _hibernate(self, tier: Tier, provider: Provider, index: int, reason: str) -> str:
        ctx = self.ctx
        name = node_name(tier.name, index)
        started = ctx.monotonic()
        vm = provider.find_vm(name)
        while vm is not None:
            if vm.phase is VmPhase.HIBERNATED:
                ctx.note(tier, name, vm, NodeState.HIBERNATED, reason)
                return name
            if vm.phase is VmPhase.ERROR:
                ctx.note(tier, name, vm, NodeState.FAILED, f"{reason}: VM in {vm.status}, nothing to hibernate")
                return name
            if vm.phase is VmPhase.RUNNING:
                provider.hibernate_vm(vm.provider_id)
                ctx.note(tier, name, vm, NodeState.HIBERNATING, reason)
            # CREATING, RESTORING, HIBERNATING, STOPPED, DELETING: wait for a state we can act on.
            if ctx.monotonic() - started > float(tier.wake_timeout_s):
                raise FleetTimeoutError(f"node {name} is still {vm.status} after {ctx.monotonic() - started:.0f} s",
                                        hint="run the command again to keep waiting")
            ctx.sleep(ctx.poll_interval_s)
            vm = provider.get_vm(vm.provider_id)
        ctx.note(tier, name, None, NodeState.TERMINATED, f"{reason}: VM gone")
        return name

    def _terminate(self, tier: Tier, provider: Provider, index: int, reason: str) -> str:
        ctx = self.ctx
        name = node_name(tier.name, index)
        started = ctx.monotonic()
        vm = provider.find_vm(name)
        while vm is not None:
            if vm.phase is not VmPhase.DELETING:
                provider.delete_vm(vm.provider_id)  # retried by the provider while still creating
                ctx.progress(tier.name, name, "deleting")
            if ctx.monotonic() - started > UP_DEADLINE_S:
                raise FleetTimeoutError(f"node {name} is still {vm.status} after {ctx.monotonic() - started:.0f} s",
                                        hint="run the command again to keep waiting")
            ctx.sleep(ctx.poll_interval_s)
            vm = provider.get_vm(vm.provider_id)
        ctx.note(tier, name, None, NodeState.TERMINATED, reason)
        return name

    # -- shared ------------------------------------------------------------------------------

    def _tier_vms(self, tier: Tier, provider: Provider) -> list[Vm]:
        return [vm for vm in provider.list_vms(tier_prefix(tier.name)) if belongs_to(vm.name, tier.name)]

    def _each(self, tier: Tier, indexes, work) -> list[str]:  # noqa: ANN001
        indexes = list(indexes)
        if len(indexes) <= 1:
            return [work(i) for i in indexes]
        with ThreadPoolExecutor(max_workers=len(indexes), thread_name_prefix=f"fleet-{tier.name}") as pool:
            return list(pool.map(work, indexes))
