"""The idle clock of a fleet tier in the gateway: when it starts, and what resets it.

A pure-logic check on an emulated clock (the end-to-end behaviour runs against `spot sim cloud`
in test_scale_to_zero.py). It pins the bug that made a tier woken by the gateway's own retry,
with no request of its own, hibernate on the next health check: its time asleep was counted as
time idle.
"""

from __future__ import annotations

from spotinference.config import Tier
from spotinference.gateway.routing import Node, Route
from spotinference.gateway.tiers import TierController, TierState


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def controller(clock: Clock, *, idle_timeout_s: int = 5, min_awake_s: int = 0) -> TierController:
    tier = Tier(name="demo", provider="sim", flavor="f", environment="e", model="tiny-chat",
                idle_timeout_s=idle_timeout_s, min_awake_s=min_awake_s)
    return TierController(tier, Route("tiny-chat", tier="demo"), runtime=None, clock=clock)  # type: ignore[arg-type]


def node() -> Node:
    return Node("spot-demo-1", "http://127.0.0.1:1", "demo")


def test_a_tier_that_wakes_after_a_long_sleep_gets_its_whole_idle_timeout() -> None:
    clock = Clock()
    tier = controller(clock)
    clock.now = 300.0  # asleep (or on its fallback) since the gateway started
    tier.set_nodes([node()])
    assert tier.state is TierState.SERVING
    assert tier.idle_countdown() == 5.0
    clock.now += 3
    assert tier.idle_countdown() == 2.0
    clock.now += 2
    assert tier.idle_countdown() == 0.0


def test_a_request_after_waking_restarts_the_countdown_and_one_in_flight_stops_it() -> None:
    clock = Clock()
    tier = controller(clock)
    clock.now = 100.0
    tier.set_nodes([node()])
    clock.now += 4
    picked = tier.route.acquire()
    tier.request_started()
    assert tier.idle_countdown() is None  # a request in flight: no countdown at all
    clock.now += 30
    picked.in_flight -= 1
    tier.request_finished()
    assert tier.idle_countdown() == 5.0


def test_min_awake_still_holds_a_freshly_woken_tier_up() -> None:
    clock = Clock()
    tier = controller(clock, idle_timeout_s=5, min_awake_s=60)
    clock.now = 100.0
    tier.set_nodes([node()])
    clock.now += 10
    assert tier.idle_countdown() == 50.0
