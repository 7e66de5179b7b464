"""Scale to zero end to end: the gateway in front of a fleet on `spot sim cloud`.

A request for a hibernated tier is held (streams get keep-alive comments) while exactly one wake
runs; idle tiers hibernate after their timeout and never with requests in flight; a tier that
cannot wake, or whose spot node is reclaimed, fails over to its fallback; a request held past
the cap gets a 503 with Retry-After. Delays are scaled down; nothing asserts on wall-clock time.
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

from spotinference.fleet.records import FleetRecords
from spotinference.store import Store
from tests.conftest import SPOT, run_spot
from tests.fleet_config import sim_tier, write_fleet_config
from tests.servers import ServerProcess, clean_env, free_port, operator_headers, start_sim_cloud
from tests.test_fleet import Cloud, ok

CLOUD_FLAGS = ["--create-seconds", "1", "--hibernate-seconds", "1", "--restore-seconds", "4", "--delete-seconds", "0.5"]
MODEL = "tiny-chat"


def write_config(base_url: str, *, idle_timeout_s: int = 600, wake_timeout_s: int = 120, min_awake_s: int = 0,
                 fallback: bool = True, fallback_retry_s: float = 60, gate: bool = False) -> None:
    """The fleet config of these tests. They are about waking and hibernating, with no sampler
    running, so the budget gate is turned off explicitly unless ``gate`` (test_budget_gate.py
    tests the gate with a real sampler)."""
    common = dict(idle_timeout_s=idle_timeout_s, min_awake_s=min_awake_s, wake_timeout_s=wake_timeout_s)
    tiers = {"demo": sim_tier(**common, **({"fallback": "demo-ondemand"} if fallback else {}),
                              sim={"load_seconds": 0.5, "ttft_ms": 20, "itl_ms": 5})}
    if fallback:
        tiers["demo-ondemand"] = sim_tier(capacity="on-demand", **common, sim={"load_seconds": 0.5})
    gateway = {"keepalive_s": 1, "health_interval_s": 0.5, "provider_refresh_s": 1, "fallback_retry_s": fallback_retry_s}
    write_fleet_config(base_url, tiers, gateway=gateway, extra="" if gate else "[budget]\nenforce = false\n")


class Gateway:
    def __init__(self, server: ServerProcess, url: str, key: str, home: Path) -> None:
        self.server, self.url, self.key, self.home = server, url, key, home

    def client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=self.key, max_retries=0, timeout=120)

    def tier(self, name: str) -> dict:
        tiers = httpx.get(f"{self.url}/health", headers=operator_headers(self.home), timeout=5).json()["tiers"]
        return next(t for t in tiers if t["tier"] == name)


def start_gateway(workdir: Path, home: Path) -> Gateway:
    key = json.loads(ok("keys", "create", "test", "--json").stdout)["key"]
    port = free_port()
    server = ServerProcess(
        [str(SPOT), "serve", "--port", str(port)],
        env=clean_env(home), log_path=workdir / "gateway.log", health_url=f"http://127.0.0.1:{port}/health",
    ).start()
    return Gateway(server, f"http://127.0.0.1:{port}", key, home)


@pytest.fixture
def fleet(tmp_path: Path):
    server, root = start_sim_cloud(tmp_path / "cloud", *CLOUD_FLAGS)
    cloud = Cloud(f"{root}/v1", server)
    yield cloud
    cloud.assert_no_duplicates()
    for tier in ("demo", "demo-ondemand"):
        run_spot("down", tier, "--terminate", "--yes")
    server.stop()


def restore_calls(cloud: Cloud) -> int:
    return sum(n for path, n in cloud.state()["requests"].items() if path.endswith("/hibernate-restore"))


def wait_for(condition, timeout_s: float = 60, what: str = "condition") -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def logged_rows(at_least: int) -> list[dict]:
    """The token log once the gateway's spool holds at least that many rows (sealed every second)."""
    rows: list[dict] = []

    def enough() -> bool:
        nonlocal rows
        run_spot("db", "flush")
        rows = json.loads(ok("requests", "--last", "500", "--json").stdout)
        return len(rows) >= at_least

    wait_for(enough, 30, f"{at_least} usage rows")
    return rows


def vm_status(cloud: Cloud, name: str) -> str | None:
    return next((vm["status"] for vm in cloud.vms() if vm["name"] == name), None)


async def one_request(client: openai.AsyncOpenAI, i: int) -> tuple[str, int]:
    if i % 2:
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"hello {i}"}], max_tokens=8, stream=True,
            stream_options={"include_usage": True})
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage:
                usage = chunk.usage
        return text, usage.completion_tokens
    reply = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"hello {i}"}], max_tokens=8)
    return reply.choices[0].message.content, reply.usage.completion_tokens


def test_fifty_requests_to_a_hibernated_tier_wake_it_once_and_all_succeed(fleet: Cloud, tmp_path: Path, home: Path) -> None:
    write_config(fleet.base_url)
    ok("up", "demo")
    ok("hibernate", "demo")
    gateway = start_gateway(tmp_path, home)
    try:
        # One raw stream shows the keep-alive comments the SDK ignores.
        async def raw_stream() -> list[str]:
            async with httpx.AsyncClient(timeout=120) as client, client.stream(
                "POST", f"{gateway.url}/v1/chat/completions", headers={"Authorization": f"Bearer {gateway.key}"},
                json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True},
            ) as response:
                assert response.status_code == 200
                return [line async for line in response.aiter_lines() if line]

        async def burst() -> tuple[list, list[str]]:
            async with gateway.client() as client:
                results = await asyncio.gather(raw_stream(), *(one_request(client, i) for i in range(49)))
            return list(results[1:]), results[0]

        results, raw = asyncio.run(burst())
        assert len(results) == 49 and all(tokens > 0 for _, tokens in results)
        assert raw[0].startswith(": waking tier demo") and raw[-1] == "data: [DONE]"
        assert sum(line.startswith(": waking tier demo") for line in raw) >= 2  # every keepalive_s (1 s here)
        assert restore_calls(fleet) == 1
        # `spot status` shows the gateway's view of the tier beside the nodes.
        port = gateway.url.rsplit(":", 1)[1]
        status = run_spot("status", env={"SPOT_GATEWAY__PORT": port})
        assert status.returncode == 0 and "tiers (from the gateway)" in status.stdout
        assert "demo" in status.stdout and "serving" in status.stdout and "budget gate: open" in status.stdout
        metrics = httpx.get(f"{gateway.url}/metrics", headers=operator_headers(gateway.home)).text
        assert 'spot_tier_state{state="serving",tier="demo"} 1.0' in metrics
        assert 'spot_tier_held_requests{tier="demo"} 0.0' in metrics
        rows = logged_rows(50)
        assert len(rows) == 50 and all(r["status"] == 200 for r in rows)
        with Store(home).reading() as con:
            waits = [w for (w,) in con.execute("SELECT wake_wait_ms FROM requests").fetchall()]
        assert all(w is not None and w > 1000 for w in waits)  # each row records its wait for the wake
    finally:
        gateway.server.stop()


def test_an_idle_tier_hibernates_after_its_timeout_and_never_with_requests_in_flight(fleet: Cloud, tmp_path: Path, home: Path) -> None:
    write_config(fleet.base_url, idle_timeout_s=3)
    ok("up", "demo")
    gateway = start_gateway(tmp_path, home)
    try:
        async def long_stream() -> int:
            # ~6 s of tokens: twice the idle timeout, all of it in flight.
            async with gateway.client() as client:
                stream = await client.completions.create(
                    model=MODEL, prompt="count", max_tokens=1200, stream=True, extra_body={"ignore_eos": True},
                    stream_options={"include_usage": True})
                usage = 0
                async for chunk in stream:
                    if chunk.usage:
                        usage = chunk.usage.completion_tokens
            return usage

        assert asyncio.run(long_stream()) == 1200
        finished = time.time()
        assert vm_status(fleet, "spot-demo-1") == "ACTIVE"  # in flight past the idle timeout: still up
        wait_for(lambda: vm_status(fleet, "spot-demo-1") == "HIBERNATED", 60, "the idle tier to hibernate")
        events = FleetRecords(Store(home)).events(tier="demo", limit=50)
        decision = next(e for e in events if e.to_state == "hibernating")
        assert "idle" in decision.reason
        assert decision.event_at.timestamp() - finished >= 3 - 0.5  # not before idle_timeout_s (clock skew 0.5 s)
        assert gateway.tier("demo")["state"] in ("asleep", "hibernating")
    finally:
        gateway.server.stop()


def test_a_request_held_past_the_cap_gets_503_with_retry_after(fleet: Cloud, tmp_path: Path, home: Path) -> None:
    write_config(fleet.base_url, wake_timeout_s=2, fallback=False)
    ok("up", "demo")
    ok("hibernate", "demo")
    gateway = start_gateway(tmp_path, home)
    try:
        response = httpx.post(f"{gateway.url}/v1/chat/completions", headers={"Authorization": f"Bearer {gateway.key}"},
                              json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}, timeout=60)
        assert response.status_code == 503
        assert int(response.headers["retry-after"]) > 0
        error = response.json()["error"]
        assert error["code"] == "wake_timeout" and "demo" in error["message"]
    finally:
        gateway.server.stop()


def test_a_restore_refused_for_capacity_fails_over_to_the_fallback_tier(fleet: Cloud, tmp_path: Path, home: Path) -> None:
    write_config(fleet.base_url)
    ok("up", "demo")
    ok("hibernate", "demo")
    fleet.fault(kind="restore_capacity", count=100, mode="reject")
    gateway = start_gateway(tmp_path, home)
    try:
        results = asyncio.run(_burst(gateway, 6))
        assert all(tokens > 0 for _, tokens in results)
        rows = logged_rows(6)
        assert {r["tier"] for r in rows} == {"demo-ondemand"} and all(r["status"] == 200 for r in rows)
        assert vm_status(fleet, "spot-demo-1") == "HIBERNATED"
        assert gateway.tier("demo")["state"] == "degraded"
    finally:
        gateway.server.stop()


def test_a_reclaimed_spot_nodes_requests_complete_on_the_fallback(fleet: Cloud, tmp_path: Path, home: Path) -> None:
    write_config(fleet.base_url)
    ok("up", "demo")
    gateway = start_gateway(tmp_path, home)
    try:
        assert all(tokens > 0 for _, tokens in asyncio.run(_burst(gateway, 2)))
        [vm] = [v for v in fleet.vms() if v["name"] == "spot-demo-1"]
        fleet.reclaim(vm["id"], "error")
        # The engine may finish what it already accepted; once the node leaves the rotation,
        # every request goes to the fallback while the spot node is replaced.
        wait_for(lambda: gateway.tier("demo")["state"] != "serving", 30, "the reclaimed node to leave the rotation")
        results = asyncio.run(_burst(gateway, 6))
        assert all(tokens > 0 for _, tokens in results)
        rows = logged_rows(8)[:6]
        assert all(r["status"] == 200 for r in rows)
        assert {r["tier"] for r in rows} == {"demo-ondemand"}
        # Meanwhile the spot node is replaced, and new requests return to it.
        wait_for(lambda: gateway.tier("demo")["state"] == "serving", 60, "the spot tier to be replaced")
        asyncio.run(_burst(gateway, 2))
        assert {r["tier"] for r in logged_rows(10)[:2]} == {"demo"}
    finally:
        gateway.server.stop()


def test_when_the_spot_tier_is_back_traffic_returns_and_the_fallback_hibernates(fleet: Cloud, tmp_path: Path, home: Path) -> None:
    write_config(fleet.base_url, idle_timeout_s=5, fallback_retry_s=2)
    ok("up", "demo")
    ok("hibernate", "demo")
    fleet.fault(kind="restore_capacity", count=1, mode="reject")  # the first restore only
    gateway = start_gateway(tmp_path, home)
    try:
        asyncio.run(_burst(gateway, 3))
        assert {r["tier"] for r in logged_rows(3)} == {"demo-ondemand"}
        # The gateway tries the spot tier again by itself; capacity is back, so it wakes.
        wait_for(lambda: gateway.tier("demo")["state"] == "serving", 60, "the spot tier to come back")
        asyncio.run(_burst(gateway, 3))
        assert {r["tier"] for r in logged_rows(6)[:3]} == {"demo"}
        wait_for(lambda: vm_status(fleet, "spot-demo-ondemand-1") == "HIBERNATED", 60, "the idle fallback to hibernate")
    finally:
        gateway.server.stop()


async def _burst(gateway: Gateway, n: int) -> list[tuple[str, int]]:
    async with gateway.client() as client:
        return list(await asyncio.gather(*(one_request(client, i) for i in range(n))))


def _engine_pid(port: int) -> int:
    """The pid of the emulated node's `spot sim engine` listening on ``port``."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"sim" in argv and b"engine" in argv and str(port).encode() in argv and b"--port" in argv:
            return int(proc.name)
    raise AssertionError(f"no `spot sim engine --port {port}` process")


def test_a_running_tier_whose_engine_died_is_unhealthy_not_asleep(fleet: Cloud, tmp_path: Path, home: Path) -> None:
    # A VM whose engine crashed still bills as a running GPU: calling its tier "asleep" (as the
    # gateway did) tells the operator the opposite of what is true.
    write_config(fleet.base_url, fallback=False)
    ok("up", "demo")
    gateway = start_gateway(tmp_path, home)
    try:
        wait_for(lambda: gateway.tier("demo")["state"] == "serving", 30, "the gateway to route to the node")
        engine_url = FleetRecords(Store(home)).nodes()["spot-demo-1"].engine_url
        os.kill(_engine_pid(int(engine_url.rsplit(":", 1)[1])), signal.SIGKILL)
        wait_for(lambda: gateway.tier("demo")["state"] != "serving", 30, "the gateway to notice the dead engine")
        assert gateway.tier("demo")["state"] == "unhealthy"
        assert vm_status(fleet, "spot-demo-1") == "ACTIVE"
        metrics = httpx.get(f"{gateway.url}/metrics", headers=operator_headers(home), timeout=5).text
        assert 'spot_tier_state{state="unhealthy",tier="demo"} 1.0' in metrics
        assert 'spot_tier_state{state="asleep",tier="demo"} 0.0' in metrics
    finally:
        gateway.server.stop()
