"""`spot sim cloud`: the Hyperstack API emulator, as a real server over real HTTP.

Time: the servers run with --time-scale 0.001 (a real second is a millisecond of emulated time)
and the tests move the emulated clock with POST /_sim/advance, so every state and billing minute
is decided by the test, never by how fast this machine is. Advances stop well away from the
minute boundaries, so the few emulated milliseconds real time adds change nothing.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import run_spot
from tests.servers import ServerProcess, start_sim_cloud

KEY = "test-key-5f3a9c"
SLOW = ("--time-scale", "0.001")
DELAYS = ("--create-seconds", "30", "--hibernate-seconds", "30", "--restore-seconds", "30", "--delete-seconds", "30")
H100 = Decimal("1.90")
HIBERNATED = Decimal("0.012")
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHVzZXJAZXhhbXBsZQ user@example"


class Sim:
    """A client of one emulator: the Hyperstack API with a key, and the admin API."""

    def __init__(self, server: ServerProcess, url: str, key: str = KEY) -> None:
        self.server = server
        self.url = url
        self.http = httpx.Client(base_url=url, headers={"api_key": key}, timeout=10.0)

    def call(self, method: str, path: str, body: Any = None, **params: Any) -> httpx.Response:
        return self.http.request(method, f"/v1{path}", json=body, params=params or None)

    def ok(self, method: str, path: str, body: Any = None, **params: Any) -> dict[str, Any]:
        response = self.call(method, path, body, **params)
        assert response.status_code == 200, response.text
        data = response.json()
        assert data["status"] is True
        return data

    def admin(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        response = self.http.request(method, f"/_sim{path}", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    def advance(self, seconds: float) -> None:
        self.admin("POST", "/advance", {"seconds": seconds})

    def vm(self, vm_id: int) -> dict[str, Any]:
        return self.ok("GET", f"/core/virtual-machines/{vm_id}")["instance"]

    def key_pair(self, name: str = "k1", environment: str = "sim-local") -> None:
        self.ok("POST", "/core/keypairs", {"name": name, "environment_name": environment, "public_key": PUBLIC_KEY})

    def create(self, name: str = "vm", flavor: str = "n3-H100x1", count: int = 1, **extra: Any) -> list[dict[str, Any]]:
        body = {"name": name, "environment_name": "sim-local", "flavor_name": flavor, "key_name": "k1",
                "count": count, "assign_floating_ip": True, **extra}
        return self.ok("POST", "/core/virtual-machines", body)["instances"]

    def usage(self, *, deleted: bool = False) -> dict[tuple[str, int], dict[str, Any]]:
        params = {"deleted": "true"} if deleted else {}
        items = self.ok("GET", "/billing/billing/usage", **params)["data"]
        return {(item["resource_type"], item["resource_id"]): item for item in items}

    def close(self) -> None:
        self.http.close()
        self.server.stop()


@pytest.fixture
def start(tmp_path: Path):
    """Start emulators (each stopped at the end); same tmp dir = same state."""
    started: list[Sim] = []

    def _start(*flags: str, key: str = KEY) -> Sim:
        server, url = start_sim_cloud(tmp_path, *SLOW, *DELAYS, *flags)
        sim = Sim(server, url, key)
        started.append(sim)
        return sim

    yield _start
    for sim in started:
        sim.close()


def assert_error(response: httpx.Response, status: int, reason: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] is False and body["error_reason"] == reason and body["message"]
    return body


def wait_for(condition: Callable[[], Any], what: str, timeout_s: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for a reaper has stopped running
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def bill(*minutes_at_rate: tuple[int, Decimal]) -> float:
    """The emulator's documented rule: Σ minutes × $/h, / 60, rounded to 10 places."""
    total = sum((m * rate for m, rate in minutes_at_rate), Decimal(0)) / 60
    return float(total.quantize(Decimal("1e-10")))


# -- states ----------------------------------------------------------------------------------

def test_a_vm_goes_through_hyperstack_states(start) -> None:
    sim = start()
    sim.key_pair()
    [created] = sim.create("node-a")
    vm_id = created["id"]
    assert vm_id == 1 and created["status"] == "CREATING" and created["floating_ip"] is None
    assert created["emulator"]["engine_port"] > 0 and Path(created["emulator"]["node_dir"]).is_dir()
    assert created["environment"] == {**created["environment"], "name": "sim-local", "region": "SIM-1"}

    sim.advance(15)
    assert sim.vm(vm_id)["status"] == "BUILD"
    sim.advance(15.5)
    vm = sim.vm(vm_id)
    assert (vm["status"], vm["vm_state"], vm["power_state"]) == ("ACTIVE", "active", "RUNNING")
    assert (vm["floating_ip"], vm["floating_ip_status"], vm["fixed_ip"]) == ("127.0.0.1", "ATTACHED", "127.0.0.1")
    assert vm["flavor"]["name"] == "n3-H100x1" and vm["flavor"]["gpu_count"] == 1
    assert vm["emulator"] == created["emulator"]

    sim.ok("GET", f"/core/virtual-machines/{vm_id}/hibernate")
    assert sim.vm(vm_id)["status"] == "HIBERNATING"
    sim.advance(30.5)
    vm = sim.vm(vm_id)
    assert (vm["status"], vm["vm_state"], vm["power_state"]) == ("HIBERNATED", "shelved_offloaded", "SHUTDOWN")
    assert (vm["floating_ip"], vm["floating_ip_status"]) == (None, "DETACHED")

    sim.ok("GET", f"/core/virtual-machines/{vm_id}/hibernate-restore")
    assert sim.vm(vm_id)["status"] == "RESTORING"
    sim.advance(30.5)
    vm = sim.vm(vm_id)
    assert (vm["status"], vm["floating_ip_status"]) == ("ACTIVE", "ATTACHED")

    sim.ok("GET", f"/core/virtual-machines/{vm_id}/hibernate", retain_ip="true")
    sim.advance(30.5)
    vm = sim.vm(vm_id)
    assert (vm["status"], vm["floating_ip"], vm["floating_ip_status"]) == ("HIBERNATED", "127.0.0.1", "ATTACHED")
    sim.ok("GET", f"/core/virtual-machines/{vm_id}/hibernate-restore")
    sim.advance(30.5)

    sim.ok("GET", f"/core/virtual-machines/{vm_id}/stop")
    sim.advance(10)
    assert sim.vm(vm_id)["status"] == "SHUTOFF" and sim.vm(vm_id)["vm_state"] == "stopped"
    sim.ok("GET", f"/core/virtual-machines/{vm_id}/start")
    sim.advance(15)
    assert sim.vm(vm_id)["status"] == "ACTIVE"

    sim.ok("DELETE", f"/core/virtual-machines/{vm_id}")
    assert sim.vm(vm_id)["status"] == "DELETING"
    sim.advance(30.5)
    assert_error(sim.call("GET", f"/core/virtual-machines/{vm_id}"), 404, "not_found")
    assert sim.ok("GET", "/core/virtual-machines")["instances"] == []
    assert not Path(created["emulator"]["node_dir"]).exists()


def test_errors_have_the_hyperstack_shape(start) -> None:
    sim = start()
    anonymous = httpx.get(f"{sim.url}/v1/core/virtual-machines")
    assert_error(anonymous, 401, "unauthorized")
    sim.key_pair()
    assert_error(sim.call("POST", "/core/keypairs", {"name": "k1", "environment_name": "sim-local",
                                                      "public_key": PUBLIC_KEY}), 400, "bad_request")
    [vm] = sim.create("err")
    vm_id = vm["id"]
    assert_error(sim.call("GET", f"/core/virtual-machines/{vm_id}/hibernate"), 400, "bad_request")
    body = assert_error(sim.call("DELETE", f"/core/virtual-machines/{vm_id}"), 400, "bad_request")
    assert "being created" in body["message"]
    assert_error(sim.call("GET", "/core/virtual-machines/999"), 404, "not_found")
    assert_error(sim.call("DELETE", "/core/virtual-machines/999"), 404, "not_found")
    body = assert_error(sim.call("POST", "/core/virtual-machines", {
        "name": "x", "environment_name": "sim-local", "flavor_name": "n9-B200x8", "key_name": "k1", "count": 1,
    }), 400, "bad_request")
    assert "n9-B200x8" in body["message"]
    for wrong in ({"environment_name": "nowhere"}, {"key_name": "nokey"}, {"count": 0}, {"name": ""}):
        create = {"name": "x", "environment_name": "sim-local", "flavor_name": "sim-cpu-1", "key_name": "k1",
                  "count": 1, **wrong}
        assert_error(sim.call("POST", "/core/virtual-machines", create), 400, "bad_request")

    sim.advance(30.5)  # ACTIVE: now restore and start are the wrong calls
    assert_error(sim.call("GET", f"/core/virtual-machines/{vm_id}/hibernate-restore"), 400, "bad_request")
    assert_error(sim.call("GET", f"/core/virtual-machines/{vm_id}/start"), 400, "bad_request")
    [l40] = sim.create("no-hib", flavor="n3-L40x1")
    sim.advance(30.5)
    body = assert_error(sim.call("GET", f"/core/virtual-machines/{l40['id']}/hibernate"), 400, "bad_request")
    assert "hibernation" in body["message"]


def test_only_the_configured_key_is_accepted(start) -> None:
    sim = start("--api-key", KEY)
    assert sim.ok("GET", "/core/environments")["environments"]
    wrong = httpx.get(f"{sim.url}/v1/core/environments", headers={"api_key": "not-the-key"})
    assert_error(wrong, 401, "unauthorized")
    assert httpx.get(f"{sim.url}/v1/billing/alive").json() == {"status": True, "message": "alive"}


def test_duplicate_names_are_allowed_as_at_hyperstack(start) -> None:
    sim = start()
    sim.key_pair()
    assert sim.ok("GET", "/core/virtual-machines/name-availability/twin")["available"] is True
    first = sim.create("twin")[0]["id"]
    assert sim.ok("GET", "/core/virtual-machines/name-availability/twin")["available"] is False
    second = sim.create("twin")[0]["id"]
    assert (first, second) == (1, 2)
    listed = sim.ok("GET", "/core/virtual-machines", search="twin")["instances"]
    assert [vm["name"] for vm in listed] == ["twin", "twin"]
    counts = sim.admin("GET", "/state")["requests"]
    assert counts["POST /v1/core/virtual-machines"] == 2


def test_listing_paginates_and_filters(start) -> None:
    sim = start()
    sim.key_pair()
    sim.create("batch", count=3)
    sim.create("other")
    page1 = sim.ok("GET", "/core/virtual-machines", page=1, pageSize=2)
    page2 = sim.ok("GET", "/core/virtual-machines", page=2, pageSize=2)
    page3 = sim.ok("GET", "/core/virtual-machines", page=3, pageSize=2)
    assert [vm["id"] for vm in page1["instances"] + page2["instances"]] == [1, 2, 3, 4]
    assert (page1["count"], page1["page"], page1["page_size"]) == (4, 1, 2)
    assert page3["instances"] == []
    found = sim.ok("GET", "/core/virtual-machines", search="BATCH")["instances"]
    assert [vm["name"] for vm in found] == ["batch-1", "batch-2", "batch-3"]
    assert sim.ok("GET", "/core/virtual-machines", environment="CANADA")["instances"] == []
    sim.key_pair("k2")
    keys = sim.ok("GET", "/core/keypairs", page=2, pageSize=1)
    assert ([k["name"] for k in keys["keypairs"]], keys["count"]) == (["k2"], 2)
    assert [k["name"] for k in sim.ok("GET", "/core/keypairs", search="k1")["keypairs"]] == ["k1"]


def test_catalog_endpoints(start) -> None:
    sim = start()
    groups = sim.ok("GET", "/core/flavors")["data"]
    names = {(f["name"], f["region_name"]) for g in groups for f in g["flavors"]}
    for flavor in ("sim-cpu-1", "n3-H100x1", "n3-H100x2", "n3-A100x2", "n3-L40x1"):
        for region in ("SIM-1", "CANADA-1", "NORWAY-1"):
            assert (flavor, region) in names
    l40 = next(f for g in groups for f in g["flavors"] if f["name"] == "n3-L40x1")
    assert {"label": "no-hibernation"}.items() <= l40["labels"][0].items()
    assert {g["region_name"] for g in sim.ok("GET", "/core/flavors", region="SIM-1")["data"]} == {"SIM-1"}
    prices = sim.http.get("/v1/pricebook").json()
    assert isinstance(prices, list) and {"name": "n3-H100x2", "value": 3.8}.items() <= next(
        p for p in prices if p["name"] == "n3-H100x2").items()
    envs = {e["name"]: e["region"] for e in sim.ok("GET", "/core/environments")["environments"]}
    assert envs == {"sim-local": "SIM-1", "default-CANADA-1": "CANADA-1", "default-NORWAY-1": "NORWAY-1"}
    sim.ok("POST", "/core/environments", {"name": "mine", "region": "NORWAY-1"})
    assert_error(sim.call("POST", "/core/environments", {"name": "mine", "region": "NORWAY-1"}), 400, "bad_request")
    assert sim.ok("GET", "/billing/user-credit/credit")["data"] == {
        "credit": 500.0, "threshold": 0.0, "can_create_instance": True}


def test_volumes_attach_and_firewall_rules(start) -> None:
    sim = start()
    sim.key_pair()
    volume = sim.ok("POST", "/core/volumes", {"name": "weights", "environment_name": "sim-local", "size": 50,
                                              "volume_type": "Cloud-SSD"})["volume"]
    [vm] = sim.create("with-vol", volume_name="weights")
    assert [a["volume"]["id"] for a in vm["volume_attachments"]] == [volume["id"]]
    [bare] = sim.create("bare")
    spare = sim.ok("POST", "/core/volumes", {"name": "spare", "environment_name": "sim-local", "size": 10,
                                             "volume_type": "Cloud-SSD"})["volume"]
    attached = sim.ok("POST", f"/core/virtual-machines/{bare['id']}/attach-volumes", {"volume_ids": [spare["id"]]})
    assert attached["volume_attachments"][0]["volume_id"] == spare["id"]
    assert_error(sim.call("POST", f"/core/virtual-machines/{bare['id']}/attach-volumes",
                          {"volume_ids": [volume["id"]]}), 400, "bad_request")  # already on another VM
    assert_error(sim.call("DELETE", f"/core/volumes/{volume['id']}"), 400, "bad_request")
    rule = {"direction": "ingress", "protocol": "tcp", "ethertype": "IPv4", "remote_ip_prefix": "10.0.0.1/32",
            "port_range_min": 8000, "port_range_max": 8000}
    added = sim.ok("POST", f"/core/virtual-machines/{vm['id']}/sg-rules", rule)["security_rule"]
    assert rule.items() <= added.items()
    rules = sim.vm(vm["id"])["security_rules"]
    assert len(rules) == 1 and rule.items() <= rules[0].items()
    listed = {v["name"]: v for v in sim.ok("GET", "/core/volumes")["volumes"]}
    assert listed["weights"]["status"] == "in-use" and listed["weights"]["attachments"][0]["instance_id"] == vm["id"]

    sim.advance(30.5)
    sim.ok("DELETE", f"/core/virtual-machines/{vm['id']}")
    sim.advance(30.5)
    sim.ok("DELETE", f"/core/volumes/{volume['id']}")
    assert_error(sim.call("GET", f"/core/volumes/{volume['id']}"), 404, "not_found")
    assert {v["name"] for v in sim.ok("GET", "/core/volumes")["volumes"]} == {"spare"}


# -- money -----------------------------------------------------------------------------------

def test_billing_accrues_per_minute_by_state(start) -> None:
    """Minutes end at creation + k·60 s and bill the rate of the state the VM is in then."""
    sim = start()
    sim.key_pair()
    [vm] = sim.create("billed")
    vm_id = vm["id"]
    volume = sim.ok("POST", "/core/volumes", {"name": "v", "environment_name": "sim-local", "size": 100,
                                              "volume_type": "Cloud-SSD"})["volume"]
    vol_id = volume["id"]
    volume_rate = 100 * Decimal("0.0001")

    sim.advance(30.5)  # t = 30.5: ACTIVE (CREATING and BUILD bill nothing; no minute has ended yet)
    assert sim.usage()[("vm", vm_id)]["total_bill"] == 0
    sim.advance(600)  # t = 630.5: minutes ending at 60..600, all ACTIVE
    item = sim.usage()[("vm", vm_id)]
    assert item["total_bill"] == bill((10, H100))
    assert item["bill_per_minute"] == float((H100 / 60).quantize(Decimal("1e-10")))
    assert item["total_up_time"] == 10 and item["active"] is True and item["terminate_time"] is None

    sim.ok("GET", f"/core/virtual-machines/{vm_id}/hibernate")  # HIBERNATING 630.5 .. 660.5: minute 660 free
    sim.advance(30.5)
    assert sim.usage()[("vm", vm_id)]["bill_per_minute"] == float((HIBERNATED / 60).quantize(Decimal("1e-10")))
    sim.advance(300)  # t = 961: minutes 720..960 HIBERNATED
    assert sim.usage()[("vm", vm_id)]["total_bill"] == bill((10, H100), (5, HIBERNATED))

    sim.ok("GET", f"/core/virtual-machines/{vm_id}/hibernate-restore")  # RESTORING 961 .. 991: nothing ends
    assert sim.usage()[("vm", vm_id)]["bill_per_minute"] == 0
    sim.advance(30.5)
    sim.advance(120)  # t = 1111.5: minutes 1020, 1080 ACTIVE
    assert sim.usage()[("vm", vm_id)]["total_bill"] == bill((12, H100), (5, HIBERNATED))

    sim.ok("DELETE", f"/core/virtual-machines/{vm_id}")  # DELETING 1111.5 .. 1141.5: minute 1140 free
    sim.advance(30.5)
    assert ("vm", vm_id) not in sim.usage()
    gone = sim.usage(deleted=True)[("vm", vm_id)]
    assert gone["total_bill"] == bill((12, H100), (5, HIBERNATED))
    assert gone["bill_per_minute"] is None and gone["active"] is False and gone["terminate_time"]
    assert gone["total_up_time"] == 19

    vol_item = sim.usage()[("volume", vol_id)]  # t = 1142: the volume's minutes 60..1140
    assert vol_item["total_bill"] == bill((19, volume_rate))
    sim.ok("DELETE", f"/core/volumes/{vol_id}")
    sim.advance(600)
    assert sim.usage(deleted=True)[("volume", vol_id)]["total_bill"] == bill((19, volume_rate))
    spent = Decimal(str(bill((12, H100), (5, HIBERNATED)))) + Decimal(str(bill((19, volume_rate))))
    assert sim.ok("GET", "/billing/user-credit/credit")["data"]["credit"] == float(500 - spent)


# -- faults ----------------------------------------------------------------------------------

def test_request_faults(start) -> None:
    sim = start()
    sim.admin("POST", "/faults", {"kind": "rate_limit", "count": 2})
    for _ in range(2):
        limited = sim.call("GET", "/core/environments")
        assert limited.status_code == 429 and "retry-after" not in limited.headers
    sim.ok("GET", "/core/environments")

    sim.admin("POST", "/faults", {"kind": "server_error", "count": 1, "status": 503})
    failed = sim.call("GET", "/core/environments")
    assert failed.status_code == 503 and failed.json() == {"message": "Internal Server Error"}
    sim.ok("GET", "/core/environments")

    sim.admin("POST", "/faults", {"kind": "server_error", "count": 1, "path_prefix": "/v1/core/flavors"})
    sim.ok("GET", "/core/environments")  # not matched: the fault waits
    assert sim.admin("GET", "/state")["faults"][0]["path_prefix"] == "/v1/core/flavors"
    assert sim.call("GET", "/core/flavors").status_code == 500
    sim.ok("GET", "/core/flavors")

    sim.admin("POST", "/faults", {"kind": "slow", "count": 1, "delay_s": 2.0})
    with pytest.raises(httpx.ReadTimeout):
        sim.http.get("/v1/core/environments", timeout=0.3)
    sim.ok("GET", "/core/environments")

    sim.admin("POST", "/faults", {"kind": "rate_limit", "count": 5})
    sim.admin("DELETE", "/faults")
    sim.ok("GET", "/core/environments")
    assert sim.admin("GET", "/state")["faults"] == []
    assert sim.http.post("/_sim/faults", json={"kind": "nonsense"}).status_code == 400


def test_restore_can_fail_for_lack_of_capacity(start) -> None:
    sim = start()
    sim.key_pair("k2", "default-CANADA-1")
    [vm] = sim.create("spot", flavor="n3-H100x2", environment_name="default-CANADA-1", key_name="k2")
    vm_id = vm["id"]
    sim.advance(30.5)
    sim.ok("GET", f"/core/virtual-machines/{vm_id}/hibernate")
    sim.advance(30.5)

    sim.admin("POST", "/faults", {"kind": "restore_capacity", "count": 1, "mode": "reject"})
    body = assert_error(sim.call("GET", f"/core/virtual-machines/{vm_id}/hibernate-restore"), 400, "bad_request")
    assert body["message"] == "Insufficient capacity: no n3-H100x2 available in CANADA-1 at the moment"
    assert sim.vm(vm_id)["status"] == "HIBERNATED"

    sim.admin("POST", "/faults", {"kind": "restore_capacity", "count": 1, "mode": "revert"})
    sim.ok("GET", f"/core/virtual-machines/{vm_id}/hibernate-restore")
    assert sim.vm(vm_id)["status"] == "RESTORING"
    sim.advance(30.5)
    assert sim.vm(vm_id)["status"] == "HIBERNATED"

    sim.ok("GET", f"/core/virtual-machines/{vm_id}/hibernate-restore")  # no fault left
    sim.advance(30.5)
    assert sim.vm(vm_id)["status"] == "ACTIVE"


def test_reclaimed_spot_vms(start) -> None:
    sim = start()
    sim.key_pair()
    erred, vanished = sim.create("reclaim-me", count=2)
    sim.advance(30.5)
    sim.advance(120)  # minutes 60 and 120 ACTIVE for both

    sim.admin("POST", "/reclaim", {"vm_id": erred["id"], "mode": "error"})
    vm = sim.vm(erred["id"])
    assert (vm["status"], vm["vm_state"]) == ("ERROR", "error")
    sim.admin("POST", "/reclaim", {"vm_id": vanished["id"], "mode": "vanish"})
    assert_error(sim.call("GET", f"/core/virtual-machines/{vanished['id']}"), 404, "not_found")

    sim.advance(300)  # ERROR bills nothing; the vanished VM no longer exists
    active, deleted = sim.usage(), sim.usage(deleted=True)
    assert active[("vm", erred["id"])]["total_bill"] == bill((2, H100))
    assert active[("vm", erred["id"])]["bill_per_minute"] == 0
    assert ("vm", vanished["id"]) not in active
    item = deleted[("vm", vanished["id"])]
    assert item["total_bill"] == bill((2, H100)) and item["terminate_time"] and item["bill_per_minute"] is None
    assert not Path(vanished["emulator"]["node_dir"]).exists()
    sim.ok("DELETE", f"/core/virtual-machines/{erred['id']}")  # an ERROR VM can be deleted


def test_rate_limit_past_the_configured_requests(start) -> None:
    sim = start("--rate-limit-per-minute", "5")  # the start-up health check was one of them
    statuses = [sim.call("GET", "/core/environments") for _ in range(8)]
    codes = [r.status_code for r in statuses]
    first_429 = codes.index(429)
    assert 1 <= first_429 <= 4 and set(codes[:first_429]) == {200} and set(codes[first_429:]) == {429}
    assert all("retry-after" not in r.headers for r in statuses)
    assert sim.http.get("/_sim/state").status_code == 200  # the admin API is not limited


# -- nodes -----------------------------------------------------------------------------------

BOOT_SCRIPT = 'echo "booted in $NODE_DIR"\nsleep 300 &\necho $! > run/x.pid\n'


def _pid(node: Path) -> int:
    pid_file = node / "run" / "x.pid"
    return wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() and int(pid_file.read_text()),
                    "the boot script's pid file")


def test_boot_scripts_run_on_active_and_die_on_hibernate(start) -> None:
    sim = start()
    sim.key_pair()
    [vm] = sim.create("booted")
    node = Path(vm["emulator"]["node_dir"])
    (node / "boot" / "10-sleep.sh").write_text(BOOT_SCRIPT)
    (node / "ephemeral" / "scratch").write_text("lost on hibernate")
    (node / "weights").write_text("kept on the root disk")
    sim.advance(30.5)

    first = _pid(node)
    assert pid_alive(first)
    log = node / "log" / "boot-10-sleep.log"
    wait_for(lambda: log.exists() and f"booted in {node}" in log.read_text(), "the boot log")

    sim.ok("GET", f"/core/virtual-machines/{vm['id']}/hibernate")
    wait_for(lambda: not pid_alive(first), "the node's process to be killed")
    assert not (node / "run" / "x.pid").exists()
    assert list((node / "ephemeral").iterdir()) == [] and (node / "weights").exists()

    sim.advance(30.5)
    sim.ok("GET", f"/core/virtual-machines/{vm['id']}/hibernate-restore")
    sim.advance(30.5)
    second = _pid(node)
    assert second != first and pid_alive(second)

    sim.ok("DELETE", f"/core/virtual-machines/{vm['id']}")
    wait_for(lambda: not pid_alive(second), "the node's process to be killed on delete")
    sim.advance(30.5)
    wait_for(lambda: not node.exists(), "the node directory to be removed")


# -- persistence -----------------------------------------------------------------------------

def test_state_survives_a_restart(start, tmp_path: Path) -> None:
    sim = start()
    sim.key_pair()
    [vm] = sim.create("survivor")
    node = Path(vm["emulator"]["node_dir"])
    (node / "boot" / "10-sleep.sh").write_text(BOOT_SCRIPT)
    sim.ok("POST", "/core/volumes", {"name": "v", "environment_name": "sim-local", "size": 10, "volume_type": "SSD"})
    sim.advance(30.5)
    sim.advance(120)
    pid = _pid(node)
    before = sim.vm(vm["id"])
    bills = sim.usage()
    sim.close()

    again = start()
    after = again.vm(vm["id"])
    assert after == before  # same status, ports, node directory
    assert again.usage() == bills
    assert pid_alive(pid)  # node processes outlive the emulator, and are not booted twice
    assert (node / "log" / "boot-10-sleep.log").read_text().count("booted") == 1
    [newer] = again.create("newer")
    assert newer["id"] == vm["id"] + 1
    state = json.loads((tmp_path / "sim-cloud" / "state.json").read_text())
    assert KEY not in json.dumps(state)

    again.ok("GET", f"/core/virtual-machines/{vm['id']}/hibernate")  # 30 emulated s to HIBERNATED
    again.close()
    # Down for a while at 1000x: the hibernation completes while the emulator is not running.
    time.sleep(0.1)
    server, url = start_sim_cloud(tmp_path, "--time-scale", "1000")
    fast = Sim(server, url)
    try:
        assert fast.vm(vm["id"])["status"] == "HIBERNATED"
        assert not pid_alive(pid)
    finally:
        fast.close()


def test_the_api_key_never_reaches_the_log(start) -> None:
    sim = start("--api-key", KEY, "--log-level", "info")
    sim.key_pair()
    sim.create("logged")
    httpx.get(f"{sim.url}/v1/core/virtual-machines", headers={"api_key": KEY + "-wrong"})
    sim.admin("POST", "/faults", {"kind": "server_error", "count": 1})
    sim.call("GET", "/core/virtual-machines")
    sim.server.stop()
    log = sim.server.log_path.read_text()
    assert "POST /v1/core/virtual-machines" in log  # the access log is on
    assert KEY not in log


def test_help_describes_the_emulator() -> None:
    result = run_spot("sim", "cloud", "--help")
    assert result.returncode == 0
    for words in ("Hyperstack", "--time-scale", "--state-dir", "--rate-limit-per-minute", "/_sim"):
        assert words in result.stdout
    assert "`sim cloud` (Hyperstack API emulator" in " ".join(run_spot("sim", "--help").stdout.split())
