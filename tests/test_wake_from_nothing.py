"""A tier with no VM at all, woken by requests on two gateway workers at once: one VM, one wake.

The gateway's wake of a tier that has nothing at the provider gives it its first node (as `spot
up` would). Both workers hold requests and both call the fleet's wake; the tier lock and the
provider's name lookup make one VM. The wake is then counted where it was done: one `woke` event
(and one in spot_tier_wake_seconds), the other worker's a `wake_joined`, as for a restore.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.fleet_config import sim_tier, write_fleet_config
from tests.test_fleet import Cloud, ok
from tests.test_metrics_held import hold_on_both_workers, read_held_answers, scraped
from tests.test_scale_to_zero import fleet, start_gateway, wait_for  # noqa: F401 - fleet is a fixture


def test_two_workers_waking_a_tier_with_no_vm_create_one_and_record_one_wake(
        fleet: Cloud, tmp_path: Path, home: Path) -> None:  # noqa: F811
    tiers = {"demo": sim_tier(max_held_requests=100, wake_timeout_s=120, idle_timeout_s=600,
                              sim={"load_seconds": 3, "ttft_ms": 5, "itl_ms": 5})}
    write_fleet_config(fleet.base_url, tiers, gateway={"workers": 2, "keepalive_s": 1, "health_interval_s": 0.5,
                                                       "provider_refresh_s": 1},
                       extra="[budget]\nenforce = false\n")
    assert fleet.vms() == []  # never brought up
    # The key pair is slow to look up (under the tier lock, before the first VM is
    # made): both workers start their wake while there is still nothing at the provider.
    fleet.fault(kind="slow", count=1, delay_s=3, path_prefix="/v1/core/keypairs")
    gateway = start_gateway(tmp_path, home)
    try:
        # Every held client gets its answer once the new node serves.
        read_held_answers(hold_on_both_workers(gateway.url, gateway.key, pause_s=0.2))
        assert [vm["name"] for vm in fleet.vms()] == ["spot-demo-1"]
        creates = sum(n for call, n in fleet.state()["requests"].items()
                      if call == "POST /v1/core/virtual-machines")
        assert creates == 1, fleet.state()["requests"]

        def kinds() -> list[str]:
            events = json.loads(ok("events", "--tier", "demo", "--limit", "500", "--json").stdout)
            return [event["kind"] for event in events]

        wait_for(lambda: kinds().count("woke") + kinds().count("wake_joined") >= 2, 30,
                 "both workers to record how their wake ended")
        found = kinds()
        assert found.count("woke") == 1, found  # one node made, one wake
        assert found.count("wake_joined") >= 1, found
        wait_for(lambda: scraped(gateway.url, home, "spot_tier_wake_seconds_count") >= 1, 10, "the wake to be counted")
        assert scraped(gateway.url, home, "spot_tier_wake_seconds_count") == 1
    finally:
        gateway.server.stop()
