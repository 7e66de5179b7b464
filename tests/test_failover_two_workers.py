"""A tier failing over under two gateway workers is one decision: one event, one count.

Both workers hold requests for a hibernated spot tier whose restore is refused for capacity
(`spot sim cloud`'s fault). Each worker fails its own held requests over to the on-demand
fallback, but the operator's record of what the fleet decided (`spot events`,
spot_tier_failovers_total, which the SpotTierFailingOver alert reads) shows the tier failing over
once, and recovering once, not once per worker.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from tests.fleet_config import sim_tier, write_fleet_config
from tests.test_fleet import Cloud, ok
from tests.test_metrics_held import hold_on_both_workers, read_held_answers, scraped
from tests.test_scale_to_zero import fleet, start_gateway, wait_for  # noqa: F401 - fleet is a fixture


def test_two_workers_failing_a_tier_over_and_back_record_one_failover_and_one_recovery(fleet: Cloud, tmp_path: Path, home: Path) -> None:  # noqa: F811
    common = {"idle_timeout_s": 600, "wake_timeout_s": 120, "max_held_requests": 100}
    tiers = {"demo": sim_tier(**common, fallback="demo-ondemand", sim={"load_seconds": 0.5, "ttft_ms": 5, "itl_ms": 5}),
             "demo-ondemand": sim_tier(capacity="on-demand", **common, sim={"load_seconds": 0.5})}
    write_fleet_config(fleet.base_url, tiers, gateway={"workers": 2, "keepalive_s": 1, "health_interval_s": 0.5,
                                                       "provider_refresh_s": 1, "fallback_retry_s": 3},
                       extra="[budget]\nenforce = false\n")
    ok("up", "demo")
    ok("hibernate", "demo")
    fleet.fault(kind="restore_capacity", count=100, mode="reject")
    # The restore is slow to be refused, so both workers hold requests before either fails over.
    fleet.fault(kind="slow", count=4, delay_s=2, path_prefix="/v1/core/virtual-machines")
    gateway = start_gateway(tmp_path, home)
    try:
        # Every held client is answered, by the fallback.
        read_held_answers(hold_on_both_workers(gateway.url, gateway.key, pause_s=0.2))

        def kinds() -> list[str]:
            events = json.loads(ok("events", "--tier", "demo", "--limit", "500", "--json").stdout)
            return [event["kind"] for event in events]

        wait_for(lambda: "failover" in kinds(), 30, "the failover to be recorded")
        wait_for(lambda: gateway.tier("demo")["state"] == "degraded", 10, "the tier to show degraded")
        assert kinds().count("failover") == 1, kinds()
        assert scraped(gateway.url, home, "spot_tier_failovers_total") == 1

        # Capacity is back: the workers' retries restore the tier (one restore), and each
        # worker, seeing it serve, recovers; the fleet recovered once.
        httpx.delete(f"{fleet.root}/_sim/faults", timeout=10).raise_for_status()
        wait_for(lambda: all(gateway.tier("demo")["state"] == "serving" for _ in range(6)), 60,
                 "both workers to serve the tier again")
        time.sleep(2)  # the second worker's recovery, if it were recorded, lands by now
        found = kinds()
        assert found.count("recovered") == 1, found
        assert found.count("failover") == 1, found
        assert found.index("failover") < found.index("recovered")
        assert scraped(gateway.url, home, "spot_tier_failovers_total") == 1
    finally:
        gateway.server.stop()


def test_a_tier_change_is_kept_once_per_change_and_again_after_the_tier_served(tmp_path: Path) -> None:
    """The rule itself, on a real store: a repeated failover or recovery is skipped; a failover
    after a node of the tier served again is a new one, even when no recovery was recorded (a
    gateway stopped mid-outage, the tier brought back by `spot up`)."""
    from datetime import UTC, datetime, timedelta

    from spotinference.fleet.records import FleetRecords
    from spotinference.fleet.states import NodeState
    from spotinference.store import Store

    ticks = iter(datetime(2026, 12, 6, tzinfo=UTC) + timedelta(seconds=s) for s in range(100))
    records = FleetRecords(Store(tmp_path), clock=lambda: next(ticks))

    def change(kind: str, tier: str = "demo") -> bool:
        return records.tier_change(tier=tier, kind=kind, reason=kind, detail={"to_tier": None})

    assert change("failover") and not change("failover")  # a second worker, same outage
    assert change("failover", tier="other")  # another tier's change is its own
    assert change("recovered") and not change("recovered")
    assert change("failover") and not change("failover")  # a new outage
    records.record(name="spot-demo-1", tier="demo", provider="sim", vm=None, state=NodeState.SERVING, reason="spot up")
    assert change("failover")  # after the tier served: a new outage, though nobody recorded a recovery
    with Store(tmp_path).reading() as con:
        kinds = [row[0] for row in con.execute(
            "SELECT json_extract_string(detail, '$.kind') FROM fleet_events WHERE tier = 'demo'"
            " AND detail IS NOT NULL ORDER BY event_at").fetchall()]
    assert kinds == ["failover", "recovered", "failover", "failover"]
