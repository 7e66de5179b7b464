"""The lifecycle commands: up, wake, down (hibernate or terminate).

Every operation re-reads the provider and moves each node one step at a time toward the goal,
so it is safe to run twice and safe to interrupt: a Ctrl-C leaves VMs in whatever state the
provider has, and the next run starts from there. Nodes of a tier are handled in parallel.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..config import Tier
from ..errors import InputError, SpotError
from ..nodes.bootstrap import Bootstrap
from ..nodes.engine_unit import EnginePlan
from ..nodes.engine_watch import EngineUnitFailedError, EngineWatch
from ..nodes.errors import NodeError, NodeUnreachableError
from ..nodes.transport import Transport
from ..providers import InsufficientCapacityError, Provider, Vm, VmPhase
from ..providers.errors import ProviderUnreachableError
from .connect import engine_bind_host, engine_port, engine_url, layout_for
from .context import FleetContext
from .engine_keys import engine_key
from .locks import tier_lock
from .naming import belongs_to, node_name, tier_prefix
from .preflight import check_tier, firewall_rules, prepare
from .states import NodeState, node_state

UP_DEADLINE_S = 3600.0  # a fresh node: create, boot, install vLLM, load weights
# An ACTIVE VM's OS boots, starts sshd and (cloud-init) installs the key within this; past it, an
# SSH error is ours to report (a wrong key or user would otherwise be retried for an hour).
SSH_BOOT_WAIT_S = 300.0
#: how long an operation under way keeps polling a provider that refuses connections. One call
#: gives up after a few seconds (a command that cannot start should say so at once), but a
#: restart of the provider's API must not abort a wake or a create already in progress.
OUTAGE_GRACE_S = 30.0
#: while waiting for /health, how often systemd is asked how the engine unit is doing (over SSH)
UNIT_CHECK_EVERY_S = 5.0


class FleetTimeoutError(SpotError):
    exit_code = 7
    http_status = 504


class NodeLostError(NodeError):
    """A node's VM was taken back by the provider (a spot reclaim): ERROR, or gone."""


class Fleet:
    def __init__(self, context: FleetContext) -> None:
        self.ctx = context

    # -- up and wake -------------------------------------------------------------------------

    def up(self, tier_name: str, *, nodes: int | None = None, brought: set[str] | None = None) -> list[str]:
        """Create (or restore) and bootstrap the tier's nodes until each serves; their names.
        ``brought`` gets the names of the nodes this call created or restored (not another
        process's under way)."""
        tier = self.ctx.tier(tier_name)
        count = nodes if nodes is not None else max(tier.min_nodes, 1)
        if not 1 <= count <= tier.max_nodes:
            raise InputError(f"--nodes {count} is out of range for tier {tier.name}: expected 1..{tier.max_nodes} (max_nodes)")
        provider = self.ctx.provider(tier.provider)
        check_tier(self.ctx.settings, tier, provider)
        self.ctx.records.decision(tier=tier.name, reason=f"spot up: {count} node(s)")
        indexes = range(1, count + 1)
        return self._each(tier, indexes, lambda i: self._bring_up(tier, provider, i, UP_DEADLINE_S, "spot up",
                                                                   restored=brought))

    def wake(self, tier_name: str, *, reason: str = "spot wake", replace_lost: bool = True) -> Woken:
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
            made: set[str] = set()  # filled from the pool's threads: set.add is atomic
            nodes = self.up(tier.name, brought=made)
            return Woken(nodes, restored=sorted(made))
        self.ctx.records.decision(tier=tier.name, reason=reason)
        indexes = sorted(int(vm.name.rsplit("-", 1)[1]) for vm in existing)
        restored: set[str] = set()  # filled from the pool's threads: set.add is atomic
        nodes = self._each(tier, indexes, lambda i: self._bring_up(tier, provider, i, float(tier.wake_timeout_s),
                                                                   reason, restored=restored))
        return Woken(nodes, restored=sorted(restored))

    def _check_not_lost(self, tier: Tier, existing: list[Vm]) -> None:
        failed = [vm for vm in existing if vm.phase is VmPhase.ERROR]
        if failed:
            raise NodeLostError(f"node {failed[0].name} is in {failed[0].status} (spot VM reclaimed?)", node=failed[0].name)
        names = {vm.name for vm in existing}
        for record in self.ctx.records.nodes().values():
            if record.tier == tier.name and record.name not in names and record.state not in (NodeState.TERMINATED,):
                raise NodeLostError(f"node {record.name} is gone at the provider (spot VM reclaimed?)", node=record.name)

    def _bring_up(self, tier: Tier, provider: Provider, index: int, deadline_s: float, reason: str, *,
                  restored: set[str] | None = None) -> str:
        """Bring one node to serving; its name. ``restored`` gets the name if this call (not
        another process's wake under way) asked the provider to create or restore the VM."""
        ctx = self.ctx
        name = node_name(tier.name, index)
        steps = _NodeSteps(ctx, tier, name)
        vm = provider.find_vm(name)
        last = ctx.records.nodes().get(name)
        if vm is None:
            state = NodeState.TERMINATED
            if last is not None and last.state is not NodeState.TERMINATED:
                steps.note(None, state, f"{reason}: VM gone at the provider")
        else:
            state = node_state(vm, engine_healthy=ctx.engine_healthy(vm, tier), last_state=last.state if last else None)
            steps.note(vm, state, f"{reason}: found", message=f"found {state.value}")
        was_serving = state is NodeState.SERVING
        recreated = bootstrapped = engine_started = restore_called = restore_seen = False
        unit_checked_at: float | None = None
        while True:
            if vm is None:
                def own(resource_type: str, resource_id: str, resource_name: str | None) -> None:
                    ctx.records.own(provider=tier.provider, resource_type=resource_type, resource_id=resource_id,
                                    name=resource_name, tier=tier.name)

                with tier_lock(ctx.settings, tier.name):
                    # Under the lock too: the tier's nodes share its key pair and volumes, and two
                    # threads that both look first and find nothing would both create them.
                    spec = prepare(ctx.settings, tier, provider, index, own)
                    # Looked up again under the lock: another process may have made it meanwhile
                    # (then its wake, not ours, brought the node).
                    vm = provider.find_vm(name)
                    made_here = vm is None
                    if made_here:
                        steps.say(f"creating a {tier.flavor} VM in {tier.environment}")
                        vm = provider.create_vm(spec)
                        if restored is not None:
                            restored.add(name)
                own("vm", vm.provider_id, vm.name)
                state = NodeState.PROVISIONING
                steps.note(vm, state, f"{reason}: created VM {vm.provider_id}" if made_here
                           else f"{reason}: VM {vm.provider_id} created by another process")
            elif vm.phase is VmPhase.ERROR:
                if recreated:
                    raise NodeError(f"node {name} went to ERROR again after being recreated ({vm.status})", node=name,
                                    hint="check the provider's console; `spot down --terminate` cleans up")
                steps.note(vm, NodeState.FAILED, f"VM in {vm.status} (reclaimed?): replacing it")
                provider.delete_vm(vm.provider_id)
                recreated = True
            elif vm.phase is VmPhase.HIBERNATED and restore_called and not restore_seen:
                # The provider has not started our restore yet: wait, never restore twice.
                steps.say("waking: restore accepted, waiting for the provider to start it", NodeState.WAKING, vm)
            elif vm.phase is VmPhase.HIBERNATED:
                if restore_called:
                    # Accepted, then back to HIBERNATED: the provider could not place it.
                    raise InsufficientCapacityError(
                        f"the restore of node {name} did not complete: the VM went back to {vm.status}",
                        provider=tier.provider, hint="no GPU capacity for this restore now: try later or a fallback tier",
                    )
                with tier_lock(ctx.settings, tier.name):
                    # Single flight across processes: restore only a VM still HIBERNATED under the lock.
                    current = provider.get_vm(vm.provider_id)
                    if current is not None and current.phase is VmPhase.HIBERNATED:
                        steps.say("restoring from hibernation", NodeState.HIBERNATED, vm)
                        provider.restore_vm(vm.provider_id)
                        restore_called = True
                        if restored is not None:
                            restored.add(name)
                state = NodeState.WAKING
                steps.note(vm, state, f"{reason}: restore requested")
            elif vm.phase is VmPhase.STOPPED:
                raise NodeError(f"node {name} is shut off ({vm.status}) and bills in full", node=name,
                                hint=f"`spot down {tier.name} --terminate` then `spot up {tier.name}`")
            elif vm.phase is VmPhase.RUNNING and vm.ready:
                if not bootstrapped:
                    engine_started = self._bootstrap(tier, provider, vm, steps, reason, was_serving=was_serving,
                                                     deadline_s=deadline_s)
                    bootstrapped = True
                    state = ctx.records.nodes()[name].state
                if ctx.engine_healthy(vm, tier):
                    if was_serving and not engine_started:
                        steps.note(vm, NodeState.SERVING, f"{reason}: already serving", message="already serving")
                    else:
                        steps.note(vm, NodeState.SERVING, f"{reason}: engine healthy")
                    return name
                if layout_for(vm).supervisor == "systemd" and (
                        unit_checked_at is None or steps.elapsed_s - unit_checked_at >= UNIT_CHECK_EVERY_S):
                    unit_checked_at = steps.elapsed_s
                    self._check_engine_unit(tier, vm, steps, reason)
                steps.say(f"{state.value}: the engine is loading (waiting for its /health)", state, vm)
            else:
                steps.say(_waiting_for(vm), state, vm)
            if steps.elapsed_s > deadline_s:
                current = node_state(vm, engine_healthy=False, last_state=state)
                raise FleetTimeoutError(
                    f"node {name} is still {current.value} ({vm.status if vm else 'gone'}) after {steps.elapsed_s:.0f} s",
                    hint=f"run the command again to keep waiting, or `spot logs {name}`",
                )
            ctx.sleep(ctx.poll_interval_s)
            vm = self._poll(provider, vm, steps) if vm is not None else None
            restore_seen = restore_seen or (vm is not None and vm.phase is VmPhase.RESTORING)
            restore_pending = restore_called and not restore_seen and vm is not None and vm.phase is VmPhase.HIBERNATED
            if vm is not None and (vm.phase is not VmPhase.RUNNING or not vm.ready) and not restore_pending:
                last = ctx.records.nodes().get(name)
                state = node_state(vm, engine_healthy=False, last_state=last.state if last else None)
                steps.note(vm, state, reason, message=_waiting_for(vm))

    def _check_engine_unit(self, tier: Tier, vm: Vm, steps: _NodeSteps, reason: str) -> None:
        """Stop waiting for /health once systemd says the engine unit crash-loops or stopped;
        the node is left running as it is, for `spot logs` and `spot ssh`."""
        watch = steps.engine_watch
        try:
            with self.ctx.transport(vm, tier) as transport:
                if watch is None:
                    watch = steps.engine_watch = EngineWatch(transport)
                watch.transport = transport
                watch.check()
        except EngineUnitFailedError:
            steps.note(vm, NodeState.FAILED, f"{reason}: engine unit failing", message=None)
            raise
        except NodeError:
            pass  # SSH hiccup (a reboot, sshd restarting): /health and the deadline still decide

    def _bootstrap(self, tier: Tier, provider: Provider, vm: Vm, steps: _NodeSteps, reason: str, *,
                   was_serving: bool, deadline_s: float) -> bool:
        """Make the node run its engine; whether the engine was (re)started (else it was left alone)."""
        ctx = self.ctx
        for rule in firewall_rules(ctx.settings, tier, vm):
            provider.add_firewall_rule(vm.provider_id, rule)
        last = ctx.records.nodes().get(vm.name)
        waking = last is not None and last.state in (NodeState.WAKING, NodeState.HIBERNATED)
        if was_serving:
            steps.say("serving: checking the engine's set-up", NodeState.SERVING, vm)
        elif waking:
            # Splits a wake into the provider's restore and the engine's start in the event log.
            ctx.records.decision(tier=tier.name, node=vm.name, reason="VM restored: engine starting")
            steps.say("VM restored: starting the engine", NodeState.WAKING, vm)
        else:
            steps.note(vm, NodeState.BOOTSTRAPPING, f"{reason}: VM ready, starting the engine")
        plan = EnginePlan(
            tier=tier, layout=layout_for(vm), host=engine_bind_host(vm), port=engine_port(vm, tier),
            api_key=engine_key(ctx.settings.home, vm.name),
        )
        with ctx.transport(vm, tier) as transport:
            self._wait_for_ssh(transport, vm, steps, deadline_s)
            result = Bootstrap(transport, plan, progress=lambda m: steps.say(m, None, vm)).run()
        started = result.restarted or any(change.startswith(("started", "restarted")) for change in result.changed)
        changes = "bootstrap: " + "; ".join(_short(change) for change in result.changed)
        if started:
            # A new engine process: "up since" starts again when it answers.
            state = NodeState.WAKING if waking else NodeState.BOOTSTRAPPING
            steps.note(vm, state, f"{reason}: engine {'restarted' if was_serving else 'started'}",
                       engine_started=True, message=changes)
        elif result.changed_anything:
            steps.say(changes, None, vm)
        return started

    def _wait_for_ssh(self, transport: Transport, vm: Vm, steps: _NodeSteps, deadline_s: float) -> None:
        """Until the node takes our SSH session: a VM reads ACTIVE before its OS has booted, started
        sshd and (cloud-init) written the user's key, so a fresh or restored VM first refuses,
        drops or rejects us. A changed host key is never waited out (HostKeyChangedError is no
        NodeUnreachableError)."""
        give_up_at = min(deadline_s, steps.elapsed_s + SSH_BOOT_WAIT_S)
        while True:
            try:
                transport.run("true")
                return
            except NodeUnreachableError as exc:
                if steps.elapsed_s > give_up_at:
                    raise
                steps.say(f"the VM is up, its OS still booting: waiting for SSH ({_short(str(exc))})", None, vm)
            self.ctx.sleep(self.ctx.poll_interval_s)

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
        steps = _NodeSteps(ctx, tier, name)
        vm = provider.find_vm(name)
        asked = False
        while vm is not None:
            if vm.phase is VmPhase.HIBERNATED:
                steps.note(vm, NodeState.HIBERNATED, reason, message=None if asked else "already hibernated")
                return name
            if vm.phase is VmPhase.ERROR:
                steps.note(vm, NodeState.FAILED, f"{reason}: VM in {vm.status}, nothing to hibernate")
                return name
            if vm.phase is VmPhase.RUNNING:
                provider.hibernate_vm(vm.provider_id)
                asked = True
                steps.note(vm, NodeState.HIBERNATING, f"{reason}: hibernation requested",
                           message="hibernating: waiting for the provider")
            else:
                # CREATING, RESTORING, HIBERNATING, STOPPED, DELETING: wait for a state we can act on.
                last = ctx.records.nodes().get(name)
                state = node_state(vm, engine_healthy=False, last_state=last.state if last else None)
                steps.note(vm, state, reason, message=_waiting_for(vm))
            if steps.elapsed_s > float(tier.wake_timeout_s):
                raise FleetTimeoutError(f"node {name} is still {vm.status} after {steps.elapsed_s:.0f} s",
                                        hint="run the command again to keep waiting")
            ctx.sleep(ctx.poll_interval_s)
            vm = self._poll(provider, vm, steps)
        steps.note(None, NodeState.TERMINATED, f"{reason}: VM gone")
        return name

    def _terminate(self, tier: Tier, provider: Provider, index: int, reason: str) -> str:
        ctx = self.ctx
        name = node_name(tier.name, index)
        steps = _NodeSteps(ctx, tier, name)
        vm = provider.find_vm(name)
        while vm is not None:
            if vm.phase is not VmPhase.DELETING:
                provider.delete_vm(vm.provider_id)  # retried by the provider while still creating
            steps.say("deleting: waiting for the provider", None, vm)
            if steps.elapsed_s > UP_DEADLINE_S:
                raise FleetTimeoutError(f"node {name} is still {vm.status} after {steps.elapsed_s:.0f} s",
                                        hint="run the command again to keep waiting")
            ctx.sleep(ctx.poll_interval_s)
            vm = self._poll(provider, vm, steps)
        steps.note(None, NodeState.TERMINATED, reason)
        return name

    def _poll(self, provider: Provider, vm: Vm, steps: _NodeSteps) -> Vm | None:
        """The VM as the provider has it now; refused connections are tried again for
        OUTAGE_GRACE_S (each failed try already took one call's grace), then the operation stops."""
        ctx = self.ctx
        outage_began: float | None = None
        while True:
            asked_at = ctx.monotonic()
            try:
                vm_now = provider.get_vm(vm.provider_id)
            except ProviderUnreachableError as exc:
                outage_began = asked_at if outage_began is None else outage_began
                down_s = ctx.monotonic() - outage_began
                if down_s >= OUTAGE_GRACE_S:
                    raise ProviderUnreachableError(
                        f"{exc.message}; no answer for {down_s:.0f} s during the operation on node {vm.name}"
                        f" (last seen {vm.status})",
                        provider=exc.provider,
                        hint="the node is left as the provider has it: run the same command again to resume",
                    ) from None
                steps.say(f"provider unreachable for {down_s:.0f} s: still trying for up to {OUTAGE_GRACE_S:.0f} s",
                          None, vm)
                ctx.sleep(ctx.poll_interval_s)
                continue
            if outage_began is not None:
                steps.say("provider reachable again", None, vm_now)
            return vm_now

    # -- shared ------------------------------------------------------------------------------

    def _tier_vms(self, tier: Tier, provider: Provider) -> list[Vm]:
        return [vm for vm in provider.list_vms(tier_prefix(tier.name)) if belongs_to(vm.name, tier.name)]

    def _each(self, tier: Tier, indexes, work) -> list[str]:  # noqa: ANN001
        indexes = list(indexes)
        if len(indexes) <= 1:
            return [work(i) for i in indexes]
        with ThreadPoolExecutor(max_workers=len(indexes), thread_name_prefix=f"fleet-{tier.name}") as pool:
            return list(pool.map(work, indexes))


@dataclass(frozen=True)
class Woken:
    """What a wake did: the tier's serving nodes, and those this call restored itself. Empty
    ``restored`` means it joined a wake another process (gateway worker, host, `spot wake`)
    performed: only the process that restored a VM reports the wake as its own."""

    nodes: list[str]
    restored: list[str] = field(default_factory=list)


class _NodeSteps:
    """What one node's operation reports: each change of step, state or provider status once,
    with the seconds since the operation on the node began."""

    def __init__(self, ctx: FleetContext, tier: Tier, name: str) -> None:
        self.ctx, self.tier, self.name = ctx, tier, name
        self.started = ctx.monotonic()
        self.engine_watch: EngineWatch | None = None  # the engine unit's restart count, once asked
        self._last: tuple[str, NodeState | None, str | None] | None = None

    @property
    def elapsed_s(self) -> float:
        return self.ctx.monotonic() - self.started

    def say(self, message: str, state: NodeState | None = None, vm: Vm | None = None) -> None:
        status = vm.status if vm else None
        if (message, state, status) == self._last:
            return
        self._last = (message, state, status)
        self.ctx.progress(self.tier.name, self.name, message, state, provider_status=status, elapsed_s=self.elapsed_s)

    def note(self, vm: Vm | None, state: NodeState, reason: str, *, message: str | None = None,
             engine_started: bool = False) -> NodeState | None:
        """Record the node's state (an event when it changed); say ``message``, or the change."""
        previous = self.ctx.records.record(
            name=self.name, tier=self.tier.name, provider=self.tier.provider, vm=vm, state=state, reason=reason,
            engine_url=engine_url(vm, self.tier) if vm else None, engine_started=engine_started,
        )
        if message is not None:
            self.say(message, state, vm)
        elif previous is not state:
            self.say(f"{state.value} ({reason})", state, vm)
        return previous


def _short(change: str) -> str:
    """'wrote /long/path/etc/spot/engine.env' → 'wrote engine.env': a progress line, not a listing."""
    verb, _, what = change.partition(" ")
    return f"{verb} {what.rsplit('/', 1)[-1]}" if verb == "wrote" else change


def _waiting_for(vm: Vm) -> str:
    """What the node is waiting for while the provider works on its VM."""
    return {
        VmPhase.CREATING: "provisioning: waiting for the VM to boot",
        VmPhase.RUNNING: "booting: waiting for the VM to be reachable",
        VmPhase.RESTORING: "waking: waiting for the provider to restore the VM",
        VmPhase.HIBERNATING: "hibernating: waiting for the provider",
        VmPhase.DELETING: "waiting for the provider to delete the VM",
        VmPhase.HIBERNATED: "hibernated",
        VmPhase.STOPPED: "stopped",
        VmPhase.ERROR: "failed",
    }[vm.phase]
