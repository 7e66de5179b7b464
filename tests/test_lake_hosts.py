"""Decisions taken once across hosts on a lake store (issue 20): "hosts" are processes with
homes of their own sharing one catalog in the suite's real PostgreSQL and one emulated cloud.

Two `spot sample` runs at once on two hosts: one samples, the other says it skipped. `spot wake`
of one hibernated tier on three hosts at once: exactly one restore reaches the provider, and every
wake ends with the tier serving. Two gateways on two hosts that both find a tier idle: it is
hibernated once. Fifty requests for a hibernated tier spread over three gateways: one restore.
Each case makes the provider slow where the race is, so it fails (two calls) without the lock.
A key revoked on one host is refused by another's gateway within 5 s. 3,000 requests over three
gateways, one killed -9 mid-way: a fourth host's `spot requests` and `spot cost` count every
acknowledged request exactly once. The emulator's ledger of API calls is the witness.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.fleet_config import sim_tier, write_fleet_config
from tests.servers import ServerProcess, free_port, start_sim_cloud
from tests.test_fleet import Cloud

FLEET_FLAGS = ["--create-seconds", "1", "--hibernate-seconds", "3", "--restore-seconds", "4", "--delete-seconds", "0.5"]


def store_section(catalog: str, data_path: Path) -> str:
    return f'[store]\nkind = "ducklake"\ncatalog = "{catalog}"\ndata_path = "{data_path}"\n'


class Host:
    """One "host": its working directory (spot.toml), its home, the catalog's password, and the
    `spot` of the venv with the ducklake extra (tests/lake_env.py), as an operator installs it."""

    def __init__(self, root: Path, password: str, spot: Path) -> None:
        self.root, self.home, self.password, self.spot_path = root, root / "home", password, spot
        root.mkdir(parents=True, exist_ok=True)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SPOT_")}
        return {**env, "SPOT_HOME": str(self.home), "SPOT_CONFIG": str(self.root / "spot.toml"),
                "SPOT_STORE__PASSWORD": self.password, **extra}

    def spot(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.spot_path), *args], cwd=self.root, env=self.env(**extra), capture_output=True,
                              text=True, timeout=300)

    def popen(self, *args: str, **extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen([str(self.spot_path), *args], cwd=self.root, env=self.env(**extra), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def ok(host: Host, *args: str) -> subprocess.CompletedProcess[str]:
    done = host.spot(*args)
    assert done.returncode == 0, f"spot {' '.join(args)} on {host.root.name} failed: {done.stderr}"
    return done


def share_fleet_secrets(source: Host, *others: Host) -> None:
    """What an operator copies to every host: the fleet's engine secret (each engine's key is
    derived from it), so any host's gateway can talk to any node."""
    for other in others:
        other.home.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source.home / "engine.secret", other.home / "engine.secret")


def advisory_locks(postgres, database: str) -> int:  # noqa: ANN001
    return int(postgres.sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = "
                            f"(SELECT oid FROM pg_database WHERE datname = '{database}')"))


def calls(cloud: Cloud, suffix: str) -> int:
    return sum(n for path, n in cloud.state()["requests"].items() if path.endswith(suffix))


@pytest.fixture
def catalog(postgres) -> tuple[str, str]:  # noqa: ANN001
    name = f"hosts_{os.getpid()}_{time.monotonic_ns()}"
    return name, postgres.create_database(name)


# -- one sampler run across hosts ---------------------------------------------------------------

def test_two_hosts_sampling_at_once_sample_once(postgres, catalog, lake_venv, tmp_path: Path,  # noqa: ANN001
                                                monkeypatch) -> None:
    from tests.test_sampler import Cloud as BillingCloud
    from tests.test_sampler import make_resources, write_config

    database, url = catalog
    server, root = start_sim_cloud(tmp_path / "cloud", "--time-scale", "0.001", "--create-seconds", "3",
                                   "--delete-seconds", "1")
    try:
        cloud = BillingCloud(root)
        hosts = [Host(tmp_path / name, postgres.password, lake_venv.spot) for name in ("host-a", "host-b")]
        for host in hosts:
            monkeypatch.chdir(host.root)
            write_config(f"{root}/v1")
            with open("spot.toml", "a") as config:
                config.write(store_section(url, tmp_path / "lake") + "[budget]\nenforce = false\n")
        make_resources(cloud)
        a, b = hosts
        ok(a, "db", "migrate")  # one lake for both hosts
        cloud.fault(kind="slow", count=1, delay_s=4, path_prefix="/v1/billing")  # host A's read hangs
        first = a.popen("sample", "--json", SPOT_PROVIDERS__SIM__RETRY_DEADLINE_S="30")
        deadline = time.monotonic() + 30
        while advisory_locks(postgres, database) == 0:
            assert first.poll() is None and time.monotonic() < deadline, "host A's run never took the lock"
            time.sleep(0.05)

        second = b.spot("sample", "--json")
        assert second.returncode == 0, second.stderr  # host A is recording this minute: not a failure
        data = json.loads(second.stdout)
        assert data["skipped"] is True and data["run_id"] is None and data["resources"] == 0
        assert second.stderr.count("\n") == 1 and "in progress" in second.stderr
        assert f"pid {first.pid}" in second.stderr  # who holds it, as the catalog knows it

        out, err = first.communicate(timeout=60)
        assert first.returncode == 0, err
        assert json.loads(out)["ok"] is True and json.loads(out)["resources"] == 4
        assert advisory_locks(postgres, database) == 0  # released with the run
        # The lock is free again: host B's next run samples.
        again = b.spot("sample", "--json")
        assert again.returncode == 0 and json.loads(again.stdout)["skipped"] is False, again.stderr
    finally:
        server.stop()


# -- one wake, one hibernation across hosts -----------------------------------------------------

@pytest.fixture
def fleet_hosts(postgres, catalog, lake_venv, tmp_path: Path):  # noqa: ANN001
    """An emulated fleet and three hosts on one catalog, tier `demo` up then hibernated from host A."""
    _, url = catalog
    server, root = start_sim_cloud(tmp_path / "cloud", *FLEET_FLAGS)
    cloud = Cloud(f"{root}/v1", server)
    hosts = [Host(tmp_path / f"host-{name}", postgres.password, lake_venv.spot) for name in "abc"]
    tiers = {"demo": sim_tier(idle_timeout_s=8, min_awake_s=0, wake_timeout_s=120,
                              sim={"load_seconds": 0.5, "ttft_ms": 20, "itl_ms": 5})}
    gateway = {"keepalive_s": 1, "health_interval_s": 0.5, "provider_refresh_s": 1}
    for host in hosts:
        write_fleet_config(cloud.base_url, tiers, gateway=gateway, path=host.root / "spot.toml",
                           extra=store_section(url, tmp_path / "lake") + "[budget]\nenforce = false\n")
    a = hosts[0]
    ok(a, "db", "migrate")  # one lake for the three hosts
    ok(a, "up", "demo")
    share_fleet_secrets(a, *hosts[1:])
    yield cloud, hosts
    cloud.assert_no_duplicates()
    a.spot("down", "demo", "--terminate", "--yes")
    server.stop()


def vm_status(cloud: Cloud) -> str | None:
    return next((vm["status"] for vm in cloud.vms() if vm["name"] == "spot-demo-1"), None)


def test_three_hosts_waking_one_tier_at_once_restore_it_once(fleet_hosts) -> None:  # noqa: ANN001
    cloud, hosts = fleet_hosts
    ok(hosts[0], "hibernate", "demo")
    assert vm_status(cloud) == "HIBERNATED" and calls(cloud, "/hibernate-restore") == 0
    # A slow provider: the first restore is answered (and applied) 3 s late, so every host that
    # looks meanwhile still sees HIBERNATED; only the tier's lock in the catalog keeps them out.
    [vm] = [vm for vm in cloud.vms() if vm["name"] == "spot-demo-1"]
    cloud.fault(kind="slow", count=1, delay_s=3,
                path_prefix=f"/v1/core/virtual-machines/{vm['id']}/hibernate-restore")
    wakes = [host.popen("wake", "demo") for host in hosts]
    results = [(w.wait(timeout=240), *w.communicate()) for w in wakes]
    for code, _, err in results:
        assert code == 0, err  # each host waited for the one restore and saw the tier serve
    assert calls(cloud, "/hibernate-restore") == 1
    assert vm_status(cloud) == "ACTIVE"


def start_gateway(host: Host, *args: str) -> tuple[ServerProcess, str]:
    port = free_port()
    server = ServerProcess([str(host.spot_path), "serve", "--port", str(port), *args], env=host.env(),
                           log_path=host.root / "gateway.log",
                           health_url=f"http://127.0.0.1:{port}/health").start()
    return server, f"http://127.0.0.1:{port}"


@pytest.mark.slow
def test_two_gateways_on_two_hosts_that_find_a_tier_idle_hibernate_it_once(fleet_hosts) -> None:  # noqa: ANN001
    cloud, hosts = fleet_hosts
    a, b = hosts[:2]
    key = json.loads(ok(a, "keys", "create", "test", "--json").stdout)["key"]
    gateways = [start_gateway(host) for host in (a, b)]
    try:
        # One request through host A: host B sees it in the engine's token counters, so both
        # gateways' idle clocks restart together and both find the tier idle within a health
        # check of each other. The provider answers the first hibernate call 4 s late (the VM
        # runs and serves meanwhile), so the second gateway decides while the first's is pending.
        [vm] = [vm for vm in cloud.vms() if vm["name"] == "spot-demo-1"]
        cloud.fault(kind="slow", count=1, delay_s=4, path_prefix=f"/v1/core/virtual-machines/{vm['id']}/hibernate")
        time.sleep(1.5)  # both gateways have read the engine's counters once
        reply = httpx.post(f"{gateways[0][1]}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                           json={"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}],
                                 "max_tokens": 4}, timeout=60)
        assert reply.status_code == 200, reply.text

        def decisions() -> list[str]:
            return [(host.root / "gateway.log").read_text() for host in (a, b)]

        deadline = time.monotonic() + 90
        while sum(log.count(f"{outcome}: tier demo") for log in decisions()
                  for outcome in ("hibernated", "hibernate skipped", "hibernate failed")) < 2:
            assert time.monotonic() < deadline, f"both gateways did not decide: {decisions()}"
            time.sleep(0.2)
        for server, _ in gateways:
            server.stop()
        logs = decisions()
        assert vm_status(cloud) == "HIBERNATED"
        assert calls(cloud, "/hibernate") == 1
        # One gateway decided and hibernated it; the other found the tier's lock taken and left it.
        assert sorted("hibernated: tier demo" in log for log in logs) == [False, True], logs
        assert sorted("hibernate skipped: tier demo" in log for log in logs) == [False, True], logs
    finally:
        for server, _ in gateways:
            server.stop()


@pytest.mark.slow
def test_fifty_requests_for_a_hibernated_tier_over_three_gateways_restore_it_once(fleet_hosts) -> None:  # noqa: ANN001
    import asyncio

    import openai

    cloud, hosts = fleet_hosts
    ok(hosts[0], "hibernate", "demo")
    keys = [json.loads(ok(host, "keys", "create", f"client-{host.root.name}", "--json").stdout)["key"]
            for host in hosts]
    gateways = [start_gateway(host) for host in hosts]
    try:
        # A slow provider: the first restore lands 3 s late, while the other gateways' wakes look.
        [vm] = [vm for vm in cloud.vms() if vm["name"] == "spot-demo-1"]
        cloud.fault(kind="slow", count=1, delay_s=3,
                    path_prefix=f"/v1/core/virtual-machines/{vm['id']}/hibernate-restore")

        async def burst() -> list[str]:
            clients = [openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=180)
                       for (_, url), key in zip(gateways, keys, strict=True)]
            try:
                replies = await asyncio.gather(*(
                    clients[i % 3].chat.completions.create(
                        model="tiny-chat", messages=[{"role": "user", "content": f"hello {i}"}], max_tokens=4)
                    for i in range(50)))
            finally:
                for client in clients:
                    await client.close()
            return [r.choices[0].message.content for r in replies]

        answers = asyncio.run(burst())
        assert len(answers) == 50 and all(answers)
        assert calls(cloud, "/hibernate-restore") == 1
        assert vm_status(cloud) == "ACTIVE"
    finally:
        for server, _ in gateways:
            server.stop()


def test_a_key_revoked_on_one_host_is_refused_by_another_hosts_gateway_within_5_s(  # noqa: ANN001
        postgres, catalog, lake_venv, tmp_path: Path) -> None:
    _, url = catalog
    a, b = (Host(tmp_path / name, postgres.password, lake_venv.spot) for name in ("host-a", "host-b"))
    for host in (a, b):
        (host.root / "spot.toml").write_text(store_section(url, tmp_path / "lake") + "\n[budget]\nenforce = false\n")
    ok(a, "db", "migrate")
    server, gateway = start_gateway(b, "--upstream", "tiny-chat=http://127.0.0.1:9/v1")
    try:
        key = json.loads(ok(a, "keys", "create", "roaming", "--json").stdout)["key"]  # made on host A

        def status() -> int:
            return httpx.get(f"{gateway}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code

        deadline = time.monotonic() + 5
        while status() != 200:
            assert time.monotonic() < deadline, "host B's gateway did not accept host A's new key within 5 s"
            time.sleep(0.1)
        ok(a, "keys", "revoke", "roaming")
        deadline = time.monotonic() + 5
        while (code := status()) == 200:
            assert time.monotonic() < deadline, "host B's gateway still accepts the key 5 s after its revocation"
            time.sleep(0.1)
        assert code == 401
        body = httpx.get(f"{gateway}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10).json()
        assert body["error"]["code"] == "invalid_api_key"
    finally:
        server.stop()


@pytest.mark.slow
def test_3000_requests_over_three_gateways_one_killed_are_each_counted_once_on_a_fourth_host(  # noqa: ANN001
        postgres, catalog, lake_venv, tmp_path: Path) -> None:
    import asyncio
    import signal

    import openai

    from tests.servers import start_sim_engine

    _, url = catalog
    engine, engine_url = start_sim_engine(tmp_path, extra=["--ttft-ms", "5", "--itl-ms", "1"])
    hosts = [Host(tmp_path / f"host-{name}", postgres.password, lake_venv.spot) for name in "abcd"]
    for host in hosts:
        (host.root / "spot.toml").write_text(store_section(url, tmp_path / "lake") + "\n[budget]\nenforce = false\n")
    a, b, c, d = hosts
    ok(a, "db", "migrate")
    key = json.loads(ok(a, "keys", "create", "drill", "--json").stdout)["key"]
    gateways = [start_gateway(host, "--upstream", f"tiny-chat={engine_url}/v1") for host in (a, b, c)]
    acked: dict[str, int] = {}  # request id → completion tokens, for every 200 a client got
    served = [0, 0, 0]  # acknowledged per gateway
    try:
        async def drill() -> None:
            clients = [openai.AsyncOpenAI(base_url=f"{gw}/v1", api_key=key, max_retries=0, timeout=60)
                       for _, gw in gateways]
            todo = iter(range(3000))

            async def one_client(n: int) -> None:
                for i in todo:
                    if len(acked) >= 1000 and gateways[2][0].proc.poll() is None:
                        os.killpg(gateways[2][0].proc.pid, signal.SIGKILL)  # host C dies, flusher and all
                    try:
                        raw = await clients[i % 3].chat.completions.with_raw_response.create(
                            model="tiny-chat", messages=[{"role": "user", "content": f"hello {i}"}], max_tokens=4)
                    except openai.APIConnectionError:
                        continue  # host C is gone: not acknowledged, so not owed to the ledger
                    acked[raw.headers["x-request-id"]] = raw.parse().usage.completion_tokens
                    served[i % 3] += 1

            try:
                await asyncio.gather(*(one_client(n) for n in range(24)))
            finally:
                for client in clients:
                    await client.close()

        asyncio.run(drill())
        assert gateways[2][0].proc.returncode == -signal.SIGKILL
        assert len(acked) > 2000 and served[2] > 0, served  # host C served before it died
        for server, _ in gateways[:2]:
            server.stop()  # a clean stop flushes the rest of their spools
        ok(c, "db", "flush")  # host C's spool outlived it: copied once, now
        rows = json.loads(ok(d, "requests", "--last", "5000", "--json").stdout)  # a fourth host reads the lake
        ids = [row["id"] for row in rows]
        assert len(ids) == len(set(ids)), "a request was counted twice"
        assert set(ids) == set(acked), (len(set(acked) - set(ids)), len(set(ids) - set(acked)))
        cost = json.loads(ok(d, "cost", "--json").stdout)
        assert cost["completion_tokens"] == sum(acked.values())  # the report counts each row once too
    finally:
        for server, _ in gateways:
            server.stop()
        engine.stop()
