"""Drills on a lake store (issue 20, item 4), with the suite's real PostgreSQL as the catalog.

PostgreSQL stopped for ~10 s under traffic: two gateways keep answering the `openai` SDK (rows
go to their local spools; the hot path never waits on the network), and once it is back a third
host's `spot requests` holds every acknowledged request exactly once. A gateway killed -9 (its
flusher with it) and started again on the same home: its new flusher copies what the dead one
left, no row twice, none lost. One wake of a hibernated tier waited on by several gateway
workers on several hosts: one restore, and one "woke" in `spot events` and in
`spot_tier_wake_seconds` (the others record that they joined a wake under way). The budget gate
on a lake: open through a catalog blink shorter than max_sample_age_s, closed (saying the store
could not be read) once the samples it holds go stale, and open again by itself when it is back.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import ServerProcess, free_port, operator_headers, start_sim_cloud, start_sim_engine
from tests.test_lake_hosts import (  # noqa: F401 - fixtures, used by name
    Host,
    calls,
    catalog,
    fleet_hosts,
    ok,
    start_gateway,
    store_section,
    vm_status,
)

MODEL = "tiny-chat"


def lake_hosts(postgres, url: str, lake_venv, tmp_path: Path, names: str) -> list[Host]:  # noqa: ANN001
    hosts = [Host(tmp_path / f"host-{name}", postgres.password, lake_venv.spot) for name in names]
    for host in hosts:
        (host.root / "spot.toml").write_text(store_section(url, tmp_path / "lake") + "\n[budget]\nenforce = false\n")
    ok(hosts[0], "db", "migrate")
    return hosts


class Traffic:
    """Clients of the official SDK sending requests round-robin to gateways until told to stop;
    every 200 is an acknowledged request the ledger owes (its id and completion tokens)."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.acked: dict[str, int] = {}
        self.refused: list[str] = []  # answered, but not 200: a gateway failed its client
        self.unreachable = 0  # no answer at all (a killed gateway): not acknowledged, not owed
        self.targets: list[str] = []

    async def run(self, stop: asyncio.Event, clients: int = 8) -> None:
        sdk = {}

        def client(url: str) -> openai.AsyncOpenAI:
            if url not in sdk:
                sdk[url] = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=self.key, max_retries=0, timeout=60)
            return sdk[url]

        async def one(n: int) -> None:
            i = n
            while not stop.is_set():
                i += clients
                target = self.targets[i % len(self.targets)]
                try:
                    raw = await client(target).chat.completions.with_raw_response.create(
                        model=MODEL, messages=[{"role": "user", "content": f"hello {i}"}], max_tokens=4)
                except openai.APIConnectionError:
                    self.unreachable += 1
                    await asyncio.sleep(0.05)
                    continue
                except openai.APIStatusError as exc:
                    self.refused.append(f"{exc.status_code} {exc.message}")
                    continue
                self.acked[raw.headers["x-request-id"]] = raw.parse().usage.completion_tokens

        try:
            await asyncio.gather(*(one(n) for n in range(clients)))
        finally:
            for c in sdk.values():
                await c.close()


def assert_counted_once(reader: Host, acked: dict[str, int]) -> None:
    rows = json.loads(ok(reader, "requests", "--last", str(len(acked) + 1000), "--json").stdout)
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)), "a request was counted twice"
    assert set(ids) == set(acked), (f"{len(set(acked) - set(ids))} acknowledged missing, "
                                    f"{len(set(ids) - set(acked))} never acknowledged")
    cost = json.loads(ok(reader, "cost", "--json").stdout)
    assert cost["completion_tokens"] == sum(acked.values())


def spool_left(host: Host) -> list[str]:
    spool = host.home / "spool"
    return sorted(p.name for p in spool.iterdir()) if spool.is_dir() else []


# -- PostgreSQL down under traffic ----------------------------------------------------------------

@pytest.mark.slow
def test_gateways_keep_serving_while_the_catalog_is_down_and_flush_every_row_once_after(  # noqa: ANN001
        postgres, catalog, lake_venv, tmp_path: Path) -> None:
    _, url = catalog
    engine, engine_url = start_sim_engine(tmp_path, extra=["--ttft-ms", "5", "--itl-ms", "1"])
    a, b, reader = lake_hosts(postgres, url, lake_venv, tmp_path, "abc")
    key = json.loads(ok(a, "keys", "create", "drill", "--json").stdout)["key"]
    gateways = [start_gateway(host, "--upstream", f"{MODEL}={engine_url}/v1") for host in (a, b)]
    traffic = Traffic(key)
    traffic.targets = [gw for _, gw in gateways]
    during_outage: dict[str, int] = {}
    catalog_down = False
    try:
        async def drill() -> None:
            stop = asyncio.Event()
            running = asyncio.ensure_future(traffic.run(stop))
            await asyncio.sleep(3)  # both gateways flushing into the lake as usual
            before = len(traffic.acked)
            nonlocal catalog_down
            catalog_down = True
            await asyncio.to_thread(postgres.stop, "immediate")  # the catalog is gone, sessions and all
            await asyncio.sleep(10)
            during_outage["served"] = len(traffic.acked) - before
            await asyncio.to_thread(postgres.start)
            catalog_down = False
            await asyncio.sleep(3)
            stop.set()
            await running

        asyncio.run(drill())
        assert traffic.refused == [] and traffic.unreachable == 0  # no client noticed the outage
        assert during_outage["served"] > 100, during_outage  # both kept answering all along
        # The gateways' own flushers catch up once the catalog is back: no restart needed.
        deadline = time.monotonic() + 60
        while True:
            ids = {row["id"] for row in json.loads(ok(reader, "requests", "--last", "50000", "--json").stdout)}
            if set(traffic.acked) <= ids:
                break
            assert time.monotonic() < deadline, f"{len(set(traffic.acked) - ids)} acknowledged rows never flushed"
            time.sleep(1)
        for server, _ in gateways:
            server.stop()
        for host in (a, b):
            assert spool_left(host) == [], "a segment was set aside or left behind"
        assert_counted_once(reader, traffic.acked)
        logs = "".join((host.root / "gateway.log").read_text() for host in (a, b))
        assert "spool flush deferred" in logs  # the flushers said, in one line each, why the lake was behind
        assert "Traceback" not in logs  # an outage of the catalog is expected weather, not a crash
    finally:
        for server, _ in gateways:
            server.stop()
        engine.stop()
        if catalog_down:
            postgres.start()  # the session's server, for the tests after this one


# -- a gateway killed and started again on the same home ------------------------------------------

@pytest.mark.slow
def test_a_gateway_killed_and_restarted_on_its_home_counts_each_request_once(  # noqa: ANN001
        postgres, catalog, lake_venv, tmp_path: Path) -> None:
    _, url = catalog
    engine, engine_url = start_sim_engine(tmp_path, extra=["--ttft-ms", "5", "--itl-ms", "1"])
    a, reader = lake_hosts(postgres, url, lake_venv, tmp_path, "ab")
    key = json.loads(ok(a, "keys", "create", "drill", "--json").stdout)["key"]
    first = start_gateway(a, "--upstream", f"{MODEL}={engine_url}/v1")
    gateways = [first]
    traffic = Traffic(key)
    traffic.targets = [first[1]]
    try:
        async def drill() -> None:
            stop = asyncio.Event()
            running = asyncio.ensure_future(traffic.run(stop))
            while len(traffic.acked) < 600:
                await asyncio.sleep(0.05)
            os.killpg(first[0].proc.pid, signal.SIGKILL)  # the gateway and its flusher, mid-traffic
            await asyncio.to_thread(first[0].proc.wait)
            orphans.extend(n for n in spool_left(a) if n.startswith("requests.") and (a.home / "spool" / n).stat().st_size)
            again = await asyncio.to_thread(start_gateway, a, "--upstream", f"{MODEL}={engine_url}/v1")
            gateways.append(again)
            traffic.targets = [again[1]]
            left_by_the_dead.update(traffic.acked)
            while len(traffic.acked) < len(left_by_the_dead) + 600:
                await asyncio.sleep(0.05)
            stop.set()
            await running

        left_by_the_dead: dict[str, int] = {}
        orphans: list[str] = []  # segments holding rows when the gateway died
        asyncio.run(drill())
        assert first[0].proc.returncode == -signal.SIGKILL
        assert orphans, "the gateway died with nothing spooled: the drill proved nothing"
        assert traffic.refused == []
        # While the restarted gateway serves, its flusher copies what the dead one acknowledged.
        deadline = time.monotonic() + 60
        while True:
            ids = {row["id"] for row in json.loads(ok(reader, "requests", "--last", "5000", "--json").stdout)}
            if set(left_by_the_dead) <= ids:
                break
            assert time.monotonic() < deadline, f"{len(set(left_by_the_dead) - ids)} rows of the dead gateway not flushed"
            time.sleep(0.5)
        gateways[1][0].stop()
        assert spool_left(a) == [], "a segment was set aside or left behind"
        assert_counted_once(reader, traffic.acked)
    finally:
        for server, _ in gateways:
            server.stop()
        engine.stop()


# -- one wake, counted once -----------------------------------------------------------------------

def start_fleet_gateway(host: Host, **env: str) -> tuple[ServerProcess, str]:
    port = free_port()
    server = ServerProcess([str(host.spot_path), "serve", "--port", str(port)], env=host.env(**env),
                           log_path=host.root / "gateway.log",
                           health_url=f"http://127.0.0.1:{port}/health").start()
    return server, f"http://127.0.0.1:{port}"


def wake_count(url: str, home: Path) -> float:
    """spot_tier_wake_seconds' count for tier demo, in one scrape of a gateway's /metrics."""
    response = httpx.get(f"{url}/metrics", headers=operator_headers(home), timeout=10)
    assert response.status_code == 200, response.text
    return sum(sample.value for family in text_string_to_metric_families(response.text)
               for sample in family.samples
               if sample.name == "spot_tier_wake_seconds_count" and sample.labels.get("tier") == "demo")


@pytest.mark.slow
def test_one_wake_waited_on_by_two_workers_and_two_hosts_is_one_woke_event(fleet_hosts) -> None:  # noqa: ANN001
    cloud, hosts = fleet_hosts
    a, b = hosts[:2]
    ok(a, "hibernate", "demo")
    key = json.loads(ok(a, "keys", "create", "wakes", "--json").stdout)["key"]
    # Host A runs two workers behind one port, host B one: three processes that may each hold
    # requests for the sleeping tier and wait on its wake.
    gateways = [(a, *start_fleet_gateway(a, SPOT_GATEWAY__WORKERS="2")), (b, *start_fleet_gateway(b))]
    try:
        [vm] = [vm for vm in cloud.vms() if vm["name"] == "spot-demo-1"]
        cloud.fault(kind="slow", count=1, delay_s=3,
                    path_prefix=f"/v1/core/virtual-machines/{vm['id']}/hibernate-restore")

        async def burst() -> int:
            async def one(i: int) -> str:
                # A client of its own per request: its own connection, so host A's kernel spreads
                # them over both workers.
                async with openai.AsyncOpenAI(base_url=f"{gateways[i % 2][2]}/v1", api_key=key, max_retries=0,
                                              timeout=180) as client:
                    reply = await client.chat.completions.create(
                        model=MODEL, messages=[{"role": "user", "content": f"hello {i}"}], max_tokens=4)
                return reply.choices[0].message.content

            answers = await asyncio.gather(*(one(i) for i in range(24)))
            return sum(1 for answer in answers if answer)

        assert asyncio.run(burst()) == 24
        assert calls(cloud, "/hibernate-restore") == 1 and vm_status(cloud) == "ACTIVE"

        def kinds() -> list[str]:
            events = json.loads(ok(a, "events", "--tier", "demo", "--limit", "500", "--json").stdout)
            return [event["kind"] for event in events]

        deadline = time.monotonic() + 30  # each waiter records its outcome once the tier serves
        while kinds().count("woke") + kinds().count("wake_joined") < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        found = kinds()
        assert found.count("woke") == 1, found  # one restore, one wake
        assert found.count("wake_joined") >= 1, found  # more than one process waited on it
        scrapes = [wake_count(url, host.home) for host, _, url in gateways]
        assert sum(scrapes) == 1, scrapes  # and the metric counts it once, where it was done
        logs = [(host.root / "gateway.log").read_text() for host in (a, b)]
        assert sum(log.count("wake finished: tier demo") for log in logs) == 1, logs
    finally:
        for _, server, _ in gateways:
            server.stop()


# -- the budget gate while the catalog is down ----------------------------------------------------

@pytest.mark.slow
def test_the_gate_stays_open_through_a_catalog_blink_and_closes_only_when_samples_go_stale(  # noqa: ANN001
        postgres, catalog, lake_venv, tmp_path: Path) -> None:
    from tests.fleet_config import sim_tier, write_fleet_config
    from tests.test_fleet import Cloud
    from tests.test_lake_hosts import FLEET_FLAGS

    _, url = catalog
    server, root = start_sim_cloud(tmp_path / "cloud", *FLEET_FLAGS)
    cloud = Cloud(f"{root}/v1", server)
    a = Host(tmp_path / "host-a", postgres.password, lake_venv.spot)
    write_fleet_config(cloud.base_url, {"demo": sim_tier(idle_timeout_s=600, sim={"load_seconds": 0.5})},
                       gateway={"health_interval_s": 0.5}, path=a.root / "spot.toml",
                       extra=store_section(url, tmp_path / "lake") + "[budget]\ndaily_usd = 1000\n"
                             "max_sample_age_s = 12\nrefresh_s = 0.5\n")
    ok(a, "db", "migrate")
    ok(a, "up", "demo")
    sampler = a.popen("sample", "--every", "1")
    gateway, gateway_url = start_fleet_gateway(a)
    catalog_down = False

    def gate() -> dict:
        return httpx.get(f"{gateway_url}/health", headers=operator_headers(a.home), timeout=10).json()["budget_gate"]

    def wait_for(check, what: str, timeout_s: float = 60) -> None:  # noqa: ANN001
        deadline = time.monotonic() + timeout_s
        while not check():
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {gate()}"
            time.sleep(0.3)

    try:
        wait_for(lambda: gate()["open"], "the gate to open on fresh samples")
        # A blink shorter than max_sample_age_s: the last good samples still say what was spent.
        catalog_down = True
        postgres.stop("immediate")
        seen = []
        for _ in range(10):
            seen.append(gate()["open"])
            time.sleep(0.5)
        postgres.start()
        catalog_down = False
        assert all(seen), seen  # never closed for the blink
        # An outage longer than max_sample_age_s: spend is unobservable, never read as $0.
        catalog_down = True
        postgres.stop("immediate")
        wait_for(lambda: not gate()["open"], "the gate to close on stale samples")
        state = gate()
        assert state["reason"] == "billing_unobservable" and "could not be read" in state["message"], state
        postgres.start()
        catalog_down = False
        wait_for(lambda: gate()["open"], "the gate to reopen by itself")  # the sampler and the gate carry on
        assert sampler.poll() is None, "the sampler loop died of the outage"
    finally:
        if catalog_down:
            postgres.start()
        sampler.terminate()
        sampler.communicate(timeout=30)
        gateway.stop()
        a.spot("down", "demo", "--terminate", "--yes")
        server.stop()
