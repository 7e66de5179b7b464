"""The fleet inside the gateway: one TierController per fleet tier, kept current by a watch loop.

Every ``health_interval_s`` the loop checks each running node's engine (``/health`` for
serving, ``/metrics`` for requests running or waiting and token counters, which see traffic from
every gateway worker); every ``provider_refresh_s`` it also asks the provider for VM states. From
that it sets each tier's serving nodes, notices nodes lost to a spot reclaim, hibernates idle
tiers and retries degraded ones. Blocking fleet calls run in a thread pool of their own so a
long wake never starves the loop's other work.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import aiohttp

from ..config import Settings
from ..fleet.connect import engine_url
from ..fleet.context import FleetContext
from ..fleet.engine_keys import engine_key
from ..fleet.locks import tier_lock, try_tier_lock
from ..fleet.naming import PREFIX, parse_node_name
from ..fleet.operations import Fleet
from ..fleet.states import NodeState
from ..providers import ProviderError, Vm, VmPhase
from ..store import Store
from .logs import fields
from .routing import Node, Route, Router
from .tiers import TierController

log = logging.getLogger(__name__)
T = TypeVar("T")

_METRIC = re.compile(r"^(vllm:[a-z_]+)(?:\{[^}]*\})? ([0-9.eE+-]+)$", re.MULTILINE)


class FleetRuntime:
    def __init__(self, settings: Settings, store: Store, router: Router, *, fleet_poll_interval_s: float = 0.5) -> None:
        self.settings = settings
        self.executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="fleet")
        self.context = FleetContext(settings, store, poll_interval_s=fleet_poll_interval_s)
        self.fleet = Fleet(self.context)
        self.controllers: dict[str, TierController] = {}
        for name, tier in settings.tiers.items():
            route = router.route(tier.model_name)
            if route is None or route.tier != name:
                route = Route(tier.model_name, tier=name)  # a fallback tier: reached through its primary
            route.controller = TierController(tier, route, self)
            self.controllers[name] = route.controller
        for name, controller in self.controllers.items():
            fallback = settings.tiers[name].fallback
            controller.fallback = self.controllers.get(fallback) if fallback else None
        self._vms: dict[str, dict[str, Vm]] = {}  # tier → node name → last VM snapshot
        self._provider_checked = 0.0
        self._counters: dict[str, float] = {}  # node → last token counter total seen
        self._refreshing = asyncio.Lock()
        self._poke = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self.on_decision: Callable[[str, dict[str, Any]], None] | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.5))
        self._task = asyncio.ensure_future(self._watch())
        for controller in self.controllers.values():
            if controller.tier.min_nodes > 0:
                controller.ensure_wake("min_nodes keeps the tier warm")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        if self._http:
            await self._http.close()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def poke(self) -> None:
        self._poke.set()

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))

    async def record(self, *, tier: str, reason: str, node: str | None = None,
                     detail: dict[str, Any] | None = None) -> None:
        """Keep a decision in ``fleet_events`` (for `spot events`), off the event loop."""
        if self.on_decision is not None and detail is not None:
            self.on_decision(tier, detail)  # the gateway's metrics count wakes and failovers
        try:
            await self.call(self.context.records.decision, tier=tier, reason=reason, node=node, detail=detail)
        except Exception:  # noqa: BLE001 - an event lost to a busy database must not stop serving
            log.exception("could not record fleet event for tier %s", tier)

    async def record_tier_change(self, *, tier: str, kind: str, reason: str, detail: dict[str, Any]) -> None:
        """A failover or recovery of ``tier``, kept once however many workers and hosts saw it
        (FleetRecords.tier_change); counted in the metrics by the worker that kept it."""

        def keep() -> bool:
            with tier_lock(self.settings, tier):
                return self.context.records.tier_change(tier=tier, kind=kind, reason=reason, detail=detail)

        try:
            kept = await self.call(keep)
        except Exception:  # noqa: BLE001 - an event lost to a busy database must not stop serving
            log.exception("could not record fleet event for tier %s", tier)
            return
        if kept and self.on_decision is not None:
            self.on_decision(tier, {**detail, "kind": kind})

    # -- the watch loop --------------------------------------------------------------------------

    async def _watch(self) -> None:
        interval = self.settings.gateway.health_interval_s
        while True:
            try:
                await self.refresh_now()
            except Exception:  # noqa: BLE001 - the loop must outlive any one bad refresh
                log.exception("fleet refresh failed")
            self._poke.clear()
            try:
                await asyncio.wait_for(self._poke.wait(), interval)
            except TimeoutError:
                pass

    async def refresh_now(self) -> None:
        async with self._refreshing:
            now = time.monotonic()
            if now - self._provider_checked >= self.settings.gateway.provider_refresh_s or not self._vms:
                await self._read_provider()
                self._provider_checked = now
            for name, controller in self.controllers.items():
                await self._refresh_tier(controller, self._vms.get(name, {}))

    async def _read_provider(self) -> None:
        by_tier: dict[str, dict[str, Vm]] = {name: {} for name in self.controllers}
        for provider_name in sorted({c.tier.provider for c in self.controllers.values()}):
            try:
                vms = await self.call(self.context.provider(provider_name).list_vms, PREFIX)
            except ProviderError as exc:
                log.warning("provider %s unreachable: %s; keeping the last known VM states", provider_name, exc)
                for name, controller in self.controllers.items():
                    if controller.tier.provider == provider_name:
                        by_tier[name] = self._vms.get(name, {})
                continue
            for vm in vms:
                parsed = parse_node_name(vm.name)
                if parsed and parsed[0] in by_tier:
                    by_tier[parsed[0]][vm.name] = vm
        previous, self._vms = self._vms, by_tier
        for name, controller in self.controllers.items():
            for node, why in _lost(previous.get(name, {}), by_tier[name]):
                if await self._ended_on_purpose(node):
                    continue
                log.warning("node lost: %s of tier %s: %s", node, name, why,
                            extra=fields(event="node_lost", tier=name, node=node, why=why))
                await self.record(tier=name, node=node, reason=f"node lost: {why}")
                controller.set_nodes([n for n in controller.route.nodes if n.name != node])
                controller.lost(why)

    async def _ended_on_purpose(self, node: str) -> bool:
        # `spot down --terminate` deletes VMs too: that is no spot loss to replace.
        records = await self.call(self.context.records.nodes)
        record = records.get(node)
        return record is not None and record.state is NodeState.TERMINATED

    async def _refresh_tier(self, controller: TierController, vms: dict[str, Vm]) -> None:
        tier = controller.tier
        current = {node.name: node for node in controller.route.nodes}
        candidates = [vm for vm in vms.values() if vm.phase is VmPhase.RUNNING and vm.ready]
        checks = await asyncio.gather(*(self._check_engine(vm, tier) for vm in candidates))
        nodes: list[Node] = []
        busy = False
        for vm, (healthy, engine_busy, counters) in zip(candidates, checks, strict=True):
            busy = busy or engine_busy
            if counters is not None and self._counters.get(vm.name) not in (None, counters):
                controller.last_activity = time.monotonic()  # traffic from another worker
            if counters is not None:
                self._counters[vm.name] = counters
            if not healthy or controller.hibernate_task is not None:
                continue
            url = engine_url(vm, tier)
            node = current.get(vm.name)
            if node is None or node.base_url != url:
                key = engine_key(self.settings.home, vm.name)
                node = Node(vm.name, url or "", tier.name, authorization=f"Bearer {key}", owner=controller)
            nodes.append(node)
        static = [n for n in controller.route.nodes if n.authorization is None]  # config upstreams
        controller.engine_busy = busy
        controller.engines_down = bool(candidates) and not any(healthy for healthy, _, _ in checks)
        controller.set_nodes(static + nodes)
        controller.maybe_hibernate()
        controller.retry_if_degraded()

    async def _check_engine(self, vm: Vm, tier: Any) -> tuple[bool, bool, float | None]:
        """(healthy, requests running or waiting, token counter total) of the node's engine."""
        url = engine_url(vm, tier)
        assert self._http is not None
        try:
            async with self._http.get(f"{url}/health") as response:
                healthy = response.status == 200
            if not healthy:
                return False, False, None
            async with self._http.get(f"{url}/metrics") as response:
                text = await response.text() if response.status == 200 else ""
        except (aiohttp.ClientError, TimeoutError):
            return False, False, None
        values = _metric_sums(_METRIC.findall(text))
        busy = values.get("vllm:num_requests_running", 0) + values.get("vllm:num_requests_waiting", 0) > 0
        tokens = values.get("vllm:generation_tokens_total", 0) + values.get("vllm:prompt_tokens_total", 0)
        return True, busy, tokens

    def hibernate_once(self, tier: str, *, reason: str) -> str | None:
        """Hibernate the tier under its lock (every host's gateways and `spot wake` share it on a
        lake store), or, if another process holds it, nothing: returns who holds it. Held for the
        whole hibernation, so no other gateway decides it again and no wake restores a VM that is
        still going to sleep."""
        with try_tier_lock(self.settings, tier) as held_by:
            if held_by is None:
                self.fleet.down(tier, reason=reason)
            return held_by

    def hibernate_all(self, reason: str) -> None:
        """Hibernate every tier that has VMs running (the budget is spent: refusing requests
        does not stop an idle GPU's bill)."""
        for name, controller in self.controllers.items():
            running = any(vm.phase is VmPhase.RUNNING for vm in self._vms.get(name, {}).values())
            if (running or controller.route.nodes) and controller.tier.hibernate:
                controller.hibernate_now(reason)

    # -- reporting -------------------------------------------------------------------------------

    def snapshots(self) -> list[dict[str, Any]]:
        return [controller.snapshot() for controller in self.controllers.values()]


def _metric_sums(pairs: Iterable[tuple[str, str]]) -> dict[str, float]:
    sums: dict[str, float] = {}
    for name, value in pairs:
        sums[name] = sums.get(name, 0.0) + float(value)
    return sums


def _lost(before: dict[str, Vm], after: dict[str, Vm]) -> list[tuple[str, str]]:
    """(node, why) of each VM that was running and is now in ERROR or gone without a delete."""
    lost = []
    for name, old in before.items():
        new = after.get(name)
        if new is not None and new.phase is VmPhase.ERROR and old.phase is not VmPhase.ERROR:
            lost.append((name, f"{name} went to {new.status} (spot VM reclaimed?)"))
        elif new is None and old.phase is VmPhase.RUNNING:
            lost.append((name, f"{name} disappeared at the provider (spot VM reclaimed?)"))
    return lost
