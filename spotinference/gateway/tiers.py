"""One fleet tier as the gateway sees it: its serving nodes, the requests held while it wakes,
the single wake in flight, idle hibernation, and failover to its fallback tier.

Everything here runs on the gateway's event loop; the fleet's blocking operations (wake,
hibernate, replace) run in the ``FleetRuntime``'s threads. Held requests wait on futures that
are resolved in arrival order as soon as a node serves; the relay owns the wait cap and the
keep-alive comments.

Each decision is logged as it happens (``logs.fields(event=...)``: wake_started, wake_finished,
wake_failed, failover, recovered, hibernate_started, hibernated) and, where the fleet's own
operations do not already record it, kept in ``fleet_events`` with ``detail.kind`` for `spot events`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from ..config import Tier
from ..errors import SpotError
from ..fleet.operations import NodeLostError
from .errors import GatewayError
from .logs import fields
from .routing import Node, Route

if TYPE_CHECKING:
    from .fleet_runtime import FleetRuntime

log = logging.getLogger(__name__)

RETRY_AFTER_S = 30


class TierState(StrEnum):
    SERVING = "serving"
    WAKING = "waking"
    ASLEEP = "asleep"  # no serving node and no wake under way (hibernated, or never created)
    # A VM of the tier runs but no engine on it passes its health check (crashed and restarting,
    # still loading, or broken): not asleep, since it bills as a running GPU.
    UNHEALTHY = "unhealthy"
    HIBERNATING = "hibernating"
    DEGRADED = "degraded"  # could not wake or lost its nodes: traffic goes to the fallback


class TierController:
    def __init__(self, tier: Tier, route: Route, runtime: FleetRuntime, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.tier = tier
        self.route = route
        self.runtime = runtime
        self.clock = clock
        self.fallback: TierController | None = None
        self.held: deque[asyncio.Future[Node]] = deque()
        self.wake_task: asyncio.Task[None] | None = None
        self.wake_started: float | None = None
        self.hibernate_task: asyncio.Task[None] | None = None
        self.replace_task: asyncio.Task[None] | None = None
        self.degraded_since: float | None = None
        self.degraded_reason: str | None = None
        now = clock()
        self.last_activity = now  # a gateway that just started counts as activity
        self.last_request_wall: float | None = None
        self.awake_since: float | None = None
        self.engine_busy = False  # the engines report requests running or waiting
        self.engines_down = False  # a VM runs, but none of its engines answers /health

    # -- what the relay calls ----------------------------------------------------------------

    @property
    def state(self) -> TierState:
        if self.route.nodes:
            return TierState.SERVING
        if self.hibernate_task is not None:
            return TierState.HIBERNATING
        if self.degraded_since is not None:
            return TierState.DEGRADED
        if self.wake_task is not None:
            return TierState.WAKING
        if self.engines_down:
            return TierState.UNHEALTHY
        return TierState.ASLEEP

    def hold(self) -> asyncio.Future[Node]:
        """A future resolved with a node (already counted in flight) once one serves, or with a
        GatewayError when the tier and its fallback cannot serve."""
        if self.degraded_since is not None and self.fallback is not None:
            return self.fallback.hold()
        if len(self.held) >= self.tier.max_held_requests and self._prune_held() >= self.tier.max_held_requests:
            raise GatewayError(
                503, f"tier '{self.tier.name}' already holds {len(self.held)} requests while it wakes (max_held_requests)",
                code="too_many_held_requests", retry_after_s=RETRY_AFTER_S,
            )
        future: asyncio.Future[Node] = asyncio.get_running_loop().create_future()
        self.held.append(future)
        self.dispatch()
        if not future.done():
            self.ensure_wake(f"request for {self.route.model} held")
        return future

    def _prune_held(self) -> int:
        """Forget held requests already over (their client left, or they gave up at the cap: the
        relay cancels the future either way) and count the rest. Run only at the cap, or where a
        queue of departed clients would otherwise wake a tier for no one."""
        self.held = deque(future for future in self.held if not future.done())
        return len(self.held)

    def request_started(self) -> None:
        self.last_activity = self.clock()
        self.last_request_wall = time.time()

    def request_finished(self) -> None:
        self.last_activity = self.clock()
        self.last_request_wall = time.time()

    def node_failed(self, node: Node) -> None:
        """The relay could not reach ``node``: out of rotation until its health check passes."""
        if node in self.route.nodes:
            self.route.nodes = [n for n in self.route.nodes if n is not node]
            self.runtime.poke()

    # -- nodes coming and going (from the watcher) ---------------------------------------------

    def set_nodes(self, nodes: list[Node]) -> None:
        if nodes and not self.route.nodes:
            self.awake_since = self.clock()
        self.route.nodes = nodes
        if nodes and self.degraded_since is not None:
            self._recovered()
        self.dispatch()

    def dispatch(self) -> None:
        """Release held requests, oldest first, onto serving nodes."""
        while self.held:
            future = self.held[0]
            if future.done():  # gave up (cap reached, client gone)
                self.held.popleft()
                continue
            node = self.route.acquire()
            if node is None:
                return
            self.held.popleft()
            future.set_result(node)

    def lost(self, reason: str) -> None:
        """Every node is gone (a spot VM reclaimed): fail over, and replace them meanwhile."""
        if self.route.nodes:
            return
        self._degrade(reason)
        if self.replace_task is None:
            self.replace_task = asyncio.ensure_future(self._replace(reason))

    # -- wake ------------------------------------------------------------------------------------

    def ensure_wake(self, why: str) -> None:
        if self.wake_task is None and not self.route.nodes:
            self.wake_started = self.clock()
            self.wake_task = asyncio.ensure_future(self._wake(why))

    async def _wake(self, why: str) -> None:
        name = self.tier.name
        if self.wake_started is None:  # a retry after failover starts its wake here
            self.wake_started = self.clock()
        started = self.wake_started
        log.info("wake started: tier %s (%s)", name, why, extra=fields(event="wake_started", tier=name, why=why))
        try:
            if self.hibernate_task is not None:
                await asyncio.shield(self.hibernate_task)  # wake what is going to sleep, once it has
            woken = await self.runtime.call(self.runtime.fleet.wake, name, reason=f"gateway: {why}",
                                            replace_lost=self.fallback is None)
            await self.runtime.refresh_now()
            took_s = round(self.clock() - started, 1)
            if woken.restored:
                log.info("wake finished: tier %s serving after %.1f s (%s)", name, took_s, why,
                         extra=fields(event="wake_finished", tier=name, why=why, wake_s=took_s))
                await self.runtime.record(tier=name, reason=f"woke in {took_s:.1f} s (gateway: {why})",
                                          detail={"kind": "woke", "wake_s": took_s, "why": why})
            else:
                # Another worker, host or `spot wake` restored it: one wake, counted where it was done.
                log.info("wake joined: tier %s serving after %.1f s, restored by another process (%s)", name,
                         took_s, why, extra=fields(event="wake_joined", tier=name, why=why, wake_s=took_s))
                await self.runtime.record(tier=name, reason=f"joined a wake under way: serving after {took_s:.1f} s "
                                          f"(gateway: {why})", detail={"kind": "wake_joined", "wake_s": took_s, "why": why})
        except NodeLostError as exc:
            # Replacing a reclaimed VM takes a whole create; the fallback serves meanwhile.
            log.warning("wake failed: tier %s lost a node: %s", name, exc.message,
                        extra=fields(event="node_lost", tier=name, node=exc.node, why=exc.message))
            await self.runtime.record(tier=name, node=exc.node, reason=f"node lost: {exc.message}")
            self.lost(exc.message)
        except SpotError as exc:
            self._wake_failed(exc.message, started)
            await self.runtime.record(tier=name, reason=f"wake failed: {exc.message}",
                                      detail={"kind": "wake_failed", "after_s": round(self.clock() - started, 1)})
            self._degrade(f"wake failed: {exc.message}")
        except Exception as exc:  # noqa: BLE001 - held requests must get an answer, never hang
            log.exception("waking tier %s failed", name)
            self._wake_failed(type(exc).__name__, started)
            await self.runtime.record(tier=name, reason=f"wake failed: {type(exc).__name__}: {exc}",
                                      detail={"kind": "wake_failed", "after_s": round(self.clock() - started, 1)})
            self._degrade(f"wake failed: {type(exc).__name__}")
        finally:
            self.wake_task = None
            self.wake_started = None

    def _wake_failed(self, why: str, started: float) -> None:
        after_s = round(self.clock() - started, 1)
        log.warning("wake failed: tier %s after %.1f s: %s", self.tier.name, after_s, why,
                    extra=fields(event="wake_failed", tier=self.tier.name, why=why, after_s=after_s))

    async def _replace(self, reason: str) -> None:
        try:
            await self.runtime.record(tier=self.tier.name, reason=f"replacing lost nodes: {reason}")
            await self.runtime.call(self.runtime.fleet.up, self.tier.name)
            await self.runtime.refresh_now()
        except SpotError as exc:
            await self.runtime.record(tier=self.tier.name, reason=f"replacement failed: {exc.message}")
        finally:
            self.replace_task = None

    def _degrade(self, reason: str) -> None:
        if self.degraded_since is None:
            self.degraded_since = self.clock()
            self._failed_over(reason)
        self.degraded_reason = reason
        held, self.held = list(self.held), deque()
        if self.fallback is not None:
            for future in held:
                if not future.done():
                    self.fallback._adopt(future)
            if held:
                self.fallback.dispatch()
                self.fallback.ensure_wake(f"fallback for {self.tier.name}: {reason}")
            return
        error = GatewayError(503, f"tier '{self.tier.name}' cannot serve now ({reason}) and has no fallback tier",
                             code="tier_unavailable", retry_after_s=RETRY_AFTER_S)
        for future in held:
            if not future.done():
                future.set_exception(error)

    def _failed_over(self, reason: str) -> None:
        name, to = self.tier.name, self.fallback.tier.name if self.fallback else None
        said = f"failover: tier {name} to {to} ({reason})" if to else f"tier {name} cannot serve, no fallback ({reason})"
        log.warning(said, extra=fields(event="failover", tier=name, to_tier=to, why=reason))
        asyncio.ensure_future(self.runtime.record_tier_change(
            tier=name, kind="failover",
            reason=f"failover to {to}: {reason}" if to else f"cannot serve (no fallback tier): {reason}",
            detail={"to_tier": to}))

    def _adopt(self, future: asyncio.Future[Node]) -> None:
        self.held.append(future)

    def _recovered(self) -> None:
        reason = self.degraded_reason
        self.degraded_since = self.degraded_reason = None
        log.info("tier %s serving again after: %s", self.tier.name, reason,
                 extra=fields(event="recovered", tier=self.tier.name, why=reason))
        asyncio.ensure_future(self.runtime.record_tier_change(
            tier=self.tier.name, kind="recovered", reason=f"serving again after: {reason}", detail={}))

    def retry_if_degraded(self) -> None:
        """While traffic runs on the fallback, try the tier itself again now and then."""
        if self.degraded_since is None or self.wake_task is not None or self.replace_task is not None:
            return
        if self.clock() - self.degraded_since >= self.runtime.settings.gateway.fallback_retry_s:
            self.degraded_since = self.clock()  # next retry one interval from now
            self.wake_task = asyncio.ensure_future(self._wake("retrying after failover"))

    # -- idle ------------------------------------------------------------------------------------

    def idle_for(self) -> float | None:
        """Seconds since the last request or since the tier woke, whichever is later, while
        nothing is in flight; None while busy. A tier asleep or on its fallback for a while has
        not been idle while awake: counting that time would hibernate it the moment it wakes."""
        if (self.held and self._prune_held()) or self.engine_busy or any(n.in_flight for n in self.route.nodes):
            return None
        since = self.last_activity if self.awake_since is None else max(self.last_activity, self.awake_since)
        return self.clock() - since

    def idle_countdown(self) -> float | None:
        idle = self.idle_for()
        if idle is None or not self.route.nodes or not self._may_hibernate():
            return None
        awake = self.clock() - (self.awake_since or 0)
        return max(self.tier.idle_timeout_s - idle, self.tier.min_awake_s - awake, 0.0)

    def _may_hibernate(self) -> bool:
        return self.tier.hibernate and self.tier.min_nodes == 0

    def maybe_hibernate(self) -> None:
        countdown = self.idle_countdown()
        if countdown is None or countdown > 0 or self.hibernate_task is not None or self.wake_task is not None:
            return
        idle = self.idle_for() or 0.0
        # Out of rotation first, so no request can land on a node that is going to sleep.
        nodes, self.route.nodes = self.route.nodes, []
        if any(n.in_flight for n in nodes):
            self.route.nodes = nodes  # one slipped in: not idle after all
            return
        why = f"idle {idle:.0f} s (idle_timeout_s {self.tier.idle_timeout_s})"
        log.info("hibernate started: tier %s, %s", self.tier.name, why,
                 extra=fields(event="hibernate_started", tier=self.tier.name, why=why, idle_s=round(idle, 1)))
        self.hibernate_task = asyncio.ensure_future(self._hibernate(why))

    def hibernate_now(self, reason: str) -> None:
        """Hibernate whatever the traffic (a spent budget): out of rotation at once, then once
        the requests already in flight have finished, since a node in use is never hibernated."""
        if self.hibernate_task is not None:
            return
        nodes, self.route.nodes = self.route.nodes, []
        log.warning("hibernate started: tier %s, %s", self.tier.name, reason,
                    extra=fields(event="hibernate_started", tier=self.tier.name, why=reason))
        self.hibernate_task = asyncio.ensure_future(self._drain_then_hibernate(nodes, reason))

    async def _drain_then_hibernate(self, nodes: list[Node], reason: str) -> None:
        while any(n.in_flight for n in nodes):
            await asyncio.sleep(0.2)
        await self._hibernate(reason)

    async def _hibernate(self, reason: str) -> None:
        started = self.clock()
        try:
            held_by = await self.runtime.call(self.runtime.hibernate_once, self.tier.name, reason=f"gateway: {reason}")
            if held_by is not None:
                # Another process (on a lake store, maybe another host) is waking or hibernating
                # this tier right now: its decision stands; the refresh below shows the outcome.
                log.info("hibernate skipped: tier %s, another process has the tier (%s)", self.tier.name, held_by,
                         extra=fields(event="hibernate_skipped", tier=self.tier.name, why=held_by))
                return
            took_s = round(self.clock() - started, 1)
            log.info("hibernated: tier %s in %.1f s (%s)", self.tier.name, took_s, reason,
                     extra=fields(event="hibernated", tier=self.tier.name, why=reason, hibernate_s=took_s))
        except SpotError as exc:
            log.warning("hibernate failed: tier %s: %s", self.tier.name, exc,
                        extra=fields(event="hibernate_failed", tier=self.tier.name, why=exc.message))
            await self.runtime.record(tier=self.tier.name, reason=f"idle hibernation failed: {exc.message}")
        finally:
            self.hibernate_task = None
            self.awake_since = None
            await self.runtime.refresh_now()
            if self._prune_held():
                self.ensure_wake("request held during hibernation")

    # -- reporting -------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        now = self.clock()
        return {
            "tier": self.tier.name,
            "model": self.route.model,
            "state": self.state.value,
            "serving_nodes": [n.name for n in self.route.nodes],
            "in_flight": sum(n.in_flight for n in self.route.nodes),
            "held_requests": len([f for f in self.held if not f.done()]),
            "wake_elapsed_s": round(now - self.wake_started, 1) if self.wake_started is not None else None,
            "last_request_at": self.last_request_wall,
            "idle_countdown_s": _rounded(self.idle_countdown()),
            "degraded_reason": self.degraded_reason,
            "fallback": self.fallback.tier.name if self.fallback else None,
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
