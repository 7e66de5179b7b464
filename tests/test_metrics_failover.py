"""A tier failing over shows in /metrics (issue 19, item 4: the SpotTierFailingOver alert reads it).

A hibernated spot tier whose restore is refused for capacity (`spot sim cloud`'s fault) behind a
real gateway: the request is served by the on-demand fallback, and the scrape then counts one
failover for the spot tier, shows it degraded, and has the fallback's finished wake.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import operator_headers
from tests.test_fleet import Cloud, ok
from tests.test_scale_to_zero import _burst, fleet, start_gateway, wait_for, write_config  # noqa: F401 - fleet is a fixture


def scrape(url: str, home: Path) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"{url}/metrics", headers=operator_headers(home), timeout=5).text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_a_failover_is_counted_and_the_fallbacks_wake_timed(fleet: Cloud, tmp_path: Path, home: Path) -> None:  # noqa: F811
    write_config(fleet.base_url)
    ok("up", "demo")
    ok("hibernate", "demo")
    fleet.fault(kind="restore_capacity", count=100, mode="reject")
    gateway = start_gateway(tmp_path, home)
    try:
        before = scrape(gateway.url, home)
        assert before[("spot_tier_failovers_total", (("tier", "demo"),))] == 0
        assert all(tokens > 0 for _, tokens in asyncio.run(_burst(gateway, 2)))
        wait_for(lambda: scrape(gateway.url, home)[("spot_tier_wake_seconds_count", (("tier", "demo-ondemand"),))] == 1,
                 30, "the fallback's wake to be counted")
        after = scrape(gateway.url, home)
        assert after[("spot_tier_failovers_total", (("tier", "demo"),))] == 1
        assert after[("spot_tier_failovers_total", (("tier", "demo-ondemand"),))] == 0
        assert after[("spot_tier_state", (("state", "degraded"), ("tier", "demo")))] == 1
        assert after[("spot_tier_wake_seconds_sum", (("tier", "demo-ondemand"),))] > 0
    finally:
        gateway.server.stop()
