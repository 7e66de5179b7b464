"""The fleet's lifecycle end to end: `spot up/status/hibernate/wake/down` against `spot sim cloud`
through the real Hyperstack client, with engines bootstrapped over the local transport (and over
a real sshd on loopback in test_fleet_ssh.py). The emulator's VM list is checked at the end of
every test: no VM duplicated, none leaked."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import SPOT, run_spot
from tests.fleet_config import sim_tier, write_fleet_config
from tests.servers import start_sim_cloud

FAST = ["--create-seconds", "1", "--hibernate-seconds", "1", "--restore-seconds", "1", "--delete-seconds", "0.5"]


def write_config(base_url: str, *, extra: str = "", **tier: object) -> None:
    demo = sim_tier(weights_volume="demo-weights", weights_volume_gb=10, max_nodes=2, sim={"load_seconds": 0.5})
    write_fleet_config(base_url, {"demo": {**demo, **tier}}, extra=extra)


class Cloud:
    """The emulator as a test sees it: its admin API and its own view of the VMs."""

    def __init__(self, base_url: str, server) -> None:  # noqa: ANN001
        self.base_url = base_url
        self.root = base_url.removesuffix("/v1")
        self.server = server

    def state(self) -> dict:
        return httpx.get(f"{self.root}/_sim/state", timeout=10).json()

    def vms(self) -> list[dict]:
        return [vm for vm in self.state()["vms"] if vm["status"] != "DELETED"]

    def fault(self, **fault: object) -> None:
        httpx.post(f"{self.root}/_sim/faults", json=fault, timeout=10).raise_for_status()

    def reclaim(self, vm_id: int, mode: str) -> None:
        httpx.post(f"{self.root}/_sim/reclaim", json={"vm_id": vm_id, "mode": mode}, timeout=10).raise_for_status()

    def assert_no_duplicates(self) -> None:
        names = [vm["name"] for vm in self.vms()]
        assert len(names) == len(set(names)), f"duplicate VMs: {names}"


@pytest.fixture
def cloud(tmp_path: Path):
    server, root = start_sim_cloud(tmp_path / "cloud", *FAST)
    base_url = f"{root}/v1"
    write_config(base_url)
    cloud = Cloud(base_url, server)
    yield cloud
    # Whatever a test did, it must leave no duplicate VM behind; then clean up its engines.
    cloud.assert_no_duplicates()
    run_spot("down", "demo", "--terminate", "--yes")
    server.stop()


def status_json() -> list[dict]:
    result = run_spot("status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def ok(*args: str) -> subprocess.CompletedProcess[str]:
    result = run_spot(*args)
    assert result.returncode == 0, f"spot {' '.join(args)} failed: {result.stderr}"
    return result


def test_the_whole_lifecycle_up_status_hibernate_wake_down(cloud: Cloud) -> None:
    ok("up", "demo")
    [node] = status_json()
    assert node["tier"] == "demo" and node["name"] == "spot-demo-1" and node["state"] == "serving"
    assert node["ip"] == "127.0.0.1" and node["provider_id"]
    assert node["usd_per_hour"] is not None and node["usd_per_hour"] > 0  # the provider's current rate
    engine = node["engine_url"]
    assert httpx.get(f"{engine}/health").status_code == 200
    # The engine demands its per-node key: only the gateway can use it.
    assert httpx.get(f"{engine}/v1/models").status_code == 401

    ok("up", "demo")  # safe to run twice: still one VM
    assert len(cloud.vms()) == 1

    ok("hibernate", "demo")
    [node] = status_json()
    assert node["state"] == "hibernated"
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{engine}/health", timeout=2)  # the VM's processes are gone

    ok("wake", "demo")
    [node] = status_json()
    assert node["state"] == "serving"
    assert httpx.get(f"{engine}/health").status_code == 200

    ok("down", "demo", "--terminate", "--yes")
    assert status_json() == []
    assert cloud.vms() == []

    events = run_spot("db", "status", "--json")
    assert events.returncode == 0


def test_every_transition_is_an_event_in_the_store(cloud: Cloud, home: Path) -> None:
    ok("up", "demo")
    ok("down", "demo")
    ok("wake", "demo")
    from spotinference.fleet.records import FleetRecords
    from spotinference.store import Store

    events = FleetRecords(Store(home)).events(node="spot-demo-1", limit=100)
    path = [e.to_state for e in reversed(events) if e.to_state]
    assert path[:3] == ["terminated", "provisioning", "bootstrapping"] or path[:2] == ["provisioning", "bootstrapping"]
    assert "serving" in path and "hibernating" in path and "hibernated" in path and "waking" in path
    tail = path[path.index("hibernated"):]
    assert tail[:2] == ["hibernated", "waking"] and tail[-1] == "serving"
    assert all(e.reason for e in events)


def test_up_with_several_nodes_and_logs_and_ssh_on_an_emulated_node(cloud: Cloud) -> None:
    ok("up", "demo", "--nodes", "2")
    assert sorted(n["name"] for n in status_json()) == ["spot-demo-1", "spot-demo-2"]
    assert all(n["state"] == "serving" for n in status_json())
    logs = ok("logs", "spot-demo-2")
    assert "spot sim engine" in logs.stdout or "serving" in logs.stdout
    result = ok("ssh", "spot-demo-1", "--", "cat", "etc/spot/engine.env")
    assert "VLLM_API_KEY=" in result.stdout
    bad = run_spot("logs", "spot-nope-1")
    assert bad.returncode == 2 and "no tier named 'nope'" in bad.stderr


def test_a_restore_refused_for_lack_of_capacity_stops_with_a_clear_error(cloud: Cloud) -> None:
    ok("up", "demo")
    ok("hibernate", "demo")
    cloud.fault(kind="restore_capacity", count=1, mode="reject")
    result = run_spot("wake", "demo")
    assert result.returncode == 5
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "capacity" in errors[0].lower() and result.stderr.splitlines()[-1] == errors[0]
    assert [vm["status"] for vm in cloud.vms()] == ["HIBERNATED"]
    ok("wake", "demo")  # capacity is back: the same VM wakes
    assert [n["state"] for n in status_json()] == ["serving"]
    assert len(cloud.vms()) == 1


def test_rate_limits_and_server_errors_are_ridden_out(cloud: Cloud) -> None:
    cloud.fault(kind="rate_limit", count=3)
    cloud.fault(kind="server_error", count=2, status=503, path_prefix="/v1/core/virtual-machines")
    ok("up", "demo")
    assert [n["state"] for n in status_json()] == ["serving"]
    assert len(cloud.vms()) == 1


def test_a_reclaimed_spot_vm_is_replaced_by_up(cloud: Cloud) -> None:
    ok("up", "demo")
    [vm] = cloud.vms()
    cloud.reclaim(vm["id"], "error")
    assert [n["state"] for n in status_json()] == ["failed"]
    ok("up", "demo")
    [replacement] = cloud.vms()
    assert replacement["id"] != vm["id"] and replacement["status"] == "ACTIVE"

    cloud.reclaim(replacement["id"], "vanish")
    assert status_json() == []
    ok("up", "demo")
    assert [n["state"] for n in status_json()] == ["serving"] and len(cloud.vms()) == 1


def test_an_interrupted_up_is_resumed_by_the_next_one(cloud: Cloud) -> None:
    proc = subprocess.Popen([str(SPOT), "up", "demo"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not cloud.vms() and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err, err
    ok("up", "demo")
    assert [n["state"] for n in status_json()] == ["serving"] and len(cloud.vms()) == 1


def test_terminate_needs_confirmation_when_not_at_a_terminal(cloud: Cloud) -> None:
    ok("up", "demo")
    result = run_spot("down", "demo", "--terminate")
    assert result.returncode == 2 and "--yes" in result.stderr
    assert len(cloud.vms()) == 1


def test_a_no_hibernation_flavor_is_refused_for_a_hibernating_tier(cloud: Cloud) -> None:
    write_config(cloud.base_url, flavor="n3-L40x1")
    result = run_spot("up", "demo")
    assert result.returncode == 2 and "no-hibernation" in result.stderr
    assert cloud.vms() == []


def test_the_provider_key_never_appears_in_output_or_logs(tmp_path: Path, home: Path) -> None:
    key = "hs-live-Zq7sUPERsecret0123456789"
    server, root = start_sim_cloud(tmp_path / "cloud2", *FAST, "--api-key", key)
    base_url = f"{root}/v1"
    try:
        write_config(base_url)
        env = {"SPOT_PROVIDERS__SIM__API_KEY": key}
        outputs = [run_spot(*args, env=env) for args in (["up", "demo"], ["status", "--json"], ["hibernate", "demo"],
                                                         ["status"], ["down", "demo", "--terminate", "--yes"])]
        assert all(o.returncode == 0 for o in outputs), [o.stderr for o in outputs]
        wrong = run_spot("status", env={"SPOT_PROVIDERS__SIM__API_KEY": key + "x"})
        assert wrong.returncode != 0 and "401" in wrong.stderr or "unauthorized" in wrong.stderr.lower()
        outputs.append(wrong)
    finally:
        server.stop()
    seen = "".join(o.stdout + o.stderr for o in outputs) + server.log_tail(10_000)
    for path in [*home.rglob("*"), *(tmp_path / "cloud2").rglob("*")]:
        if path.is_file() and path.stat().st_size < 5_000_000:
            seen += path.read_bytes().decode(errors="replace")
    assert key not in seen
