"""`spot sim cloud`'s billing as a client sees it over HTTP: history, events, billing faults, clock.

The servers run with --time-scale 0.001 and the tests move the emulated clock with
/_sim/advance (see tests/test_sim_cloud.py). Hour-aligned tests first move the clock to a UTC
hour boundary plus 30 s and create their resources then, so every billing minute ends at :30 of
a minute and a sample taken 0.25 s after an hour boundary has seen no minute of that hour.
Money is compared as Decimal, exactly: a JSON float is read through its repr, which gives back
the emulator's 10-decimal value.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from spotinference.config.settings import Settings
from spotinference.providers.registry import open_provider
from tests.servers import start_sim_cloud
from tests.test_sim_cloud import DELAYS, KEY, SLOW, Sim, assert_error

H100 = Decimal("1.90")
HIBERNATED = Decimal("0.012")
VOLUME_100GB = Decimal("0.01")
USAGE = "/billing/billing/usage"
FORMAT = "%Y-%m-%dT%H:%M:%S"


def usd(value: Any) -> Decimal:
    return Decimal(repr(value))


def rounded(usd_hour_minutes: Decimal) -> Decimal:
    return (usd_hour_minutes / 60).quantize(Decimal("1e-10"))


class Billing(Sim):
    def now_unix(self) -> float:
        return self.admin("GET", "/state")["clock"]["now_unix"]

    def to_hour(self, plus_s: float) -> datetime:
        """Advance to the next UTC hour boundary plus ``plus_s`` seconds; the boundary."""
        now = self.now_unix()
        boundary = (int(now // 3600) + 1) * 3600
        self.advance(boundary + plus_s - now)
        return datetime.fromtimestamp(boundary, UTC)

    def total(self, kind: str, rid: int, *, deleted: bool = False) -> Decimal:
        return usd(self.usage(deleted=deleted)[(kind, rid)]["total_bill"])

    def graph(self, kind: str, rid: int, **dates: datetime) -> tuple[dict[str, Any], list[tuple[str, Decimal]]]:
        path = "virtual-machine" if kind == "vm" else "volume"
        body = self.ok("GET", f"/billing/billing/history/{path}/{rid}/graph", **_dates(dates))
        details = body["billing_history_vm_details" if kind == "vm" else "billing_history_snapshot_details"]
        [entry] = details["billing_history"]
        return details, [(p["datetime"], usd(p["value"])) for p in entry["metrics"]["incurred_bill_graph"]]

    def details(self, kind: str, rid: int, **dates: datetime) -> dict[str, Any]:
        path = "virtual-machine" if kind == "vm" else "volume"
        body = self.ok("GET", f"/billing/billing/history/{path}/{rid}", **_dates(dates))
        details = body["billing_history_vm_details" if kind == "vm" else "billing_history_volume_details"]
        assert details["total_count"] == 1
        return details["billing_history"][0]

    def volume(self, name: str, size: int = 100) -> dict[str, Any]:
        return self.ok("POST", "/core/volumes", {"name": name, "environment_name": "sim-local", "size": size,
                                                 "volume_type": "Cloud-SSD"})["volume"]

    def fault(self, body: dict[str, Any]) -> None:
        self.admin("POST", "/faults", body)

    def raw_usage(self, **params: Any) -> Any:
        response = self.call("GET", USAGE, **params)
        assert response.status_code == 200, response.text
        return response.json()


def _dates(dates: dict[str, datetime]) -> dict[str, str]:
    return {f"{name}_date": moment.strftime(FORMAT) for name, moment in dates.items()}


@pytest.fixture
def start(tmp_path: Path):
    """Start emulators (each stopped at the end); ``account`` names a separate state directory."""
    started: list[Billing] = []

    def _start(*flags: str, account: str = "a") -> Billing:
        server, url = start_sim_cloud(tmp_path / account, *SLOW, *DELAYS, *flags)
        sim = Billing(server, url, KEY)
        started.append(sim)
        return sim

    yield _start
    for sim in started:
        sim.close()


# -- history -----------------------------------------------------------------------------------

def test_hourly_history_adds_up_to_the_growth_of_total_bill(start) -> None:
    sim = start()
    sim.key_pair()
    sim.to_hour(30)
    [vm] = sim.create("gpu")
    vol = sim.volume("weights")
    vm_id, vol_id = vm["id"], vol["id"]

    h1 = sim.to_hour(0.25)  # minutes ending H0+1:30 .. H0+59:30 (59), all ACTIVE
    vm_before, vol_before = sim.total("vm", vm_id), sim.total("volume", vol_id)
    assert vm_before == rounded(59 * H100)
    sim.advance(1800)  # H1+30:00.25
    sim.ok("GET", f"/core/virtual-machines/{vm_id}/hibernate")  # HIBERNATING 30 s, then HIBERNATED
    sim.advance(2400)  # H2+10:00.25
    sim.ok("GET", f"/core/virtual-machines/{vm_id}/hibernate-restore")  # RESTORING 30 s, then ACTIVE
    sim.advance(1200)  # H2+30:00.25
    sim.ok("GET", f"/core/virtual-machines/{vm_id}/stop")  # STOPPING 5 s, then SHUTOFF
    sim.advance(600)  # H2+40:00.25
    sim.ok("GET", f"/core/virtual-machines/{vm_id}/start")  # STARTING 10 s, then ACTIVE
    h3 = sim.to_hour(0.25)
    vm_after, vol_after = sim.total("vm", vm_id), sim.total("volume", vol_id)

    # H1: 30 ACTIVE, 1 HIBERNATING, 29 HIBERNATED; H2: 10 HIBERNATED, 1 RESTORING, 39 ACTIVE, 10 SHUTOFF
    assert vm_after == rounded((59 + 79) * H100 + 39 * HIBERNATED)
    details, points = sim.graph("vm", vm_id, start=h1, end=h3)
    assert details["granularity"] == 3600
    assert [p[0] for p in points] == [f"{h1:%Y-%m-%dT%H}:00:00Z", f"{h1 + timedelta(hours=1):%Y-%m-%dT%H}:00:00Z"]
    assert sum(p[1] for p in points) == vm_after - vm_before
    window = sim.details("vm", vm_id, start=h1, end=h3)
    assert window["attributes"] == {"id": str(vm_id), "infrahub_id": vm_id, "resource_name": "gpu"}
    metrics = window["metrics"]
    assert usd(metrics["incurred_bill"]) == vm_after - vm_before
    assert (metrics["usage_time"], metrics["usage_time_ACTIVE"]) == (120 / 60, 69 / 60)
    assert (metrics["usage_time_HIBERNATED"], metrics["usage_time_SHUTOFF"]) == (39 / 60, 10 / 60)

    first = sim.details("vm", vm_id, start=h1, end=h1 + timedelta(hours=1))["metrics"]
    assert usd(first["incurred_bill"]) == points[0][1]
    assert (first["usage_time_ACTIVE"], first["usage_time_HIBERNATED"]) == (30 / 60, 29 / 60)
    assert usd(first["price_per_hour"]) == HIBERNATED  # the rate of the last minute billed in the hour
    second = sim.details("vm", vm_id, start=h1 + timedelta(hours=1), end=h3)["metrics"]
    assert usd(second["price_per_hour"]) == H100 and second["usage_time_SHUTOFF"] == 10 / 60

    _, whole_life = sim.graph("vm", vm_id)  # creation to now: exactly the total_bill
    assert len(whole_life) == 3 and sum(p[1] for p in whole_life) == sim.total("vm", vm_id)
    _, vol_points = sim.graph("volume", vol_id, start=h1, end=h3)
    assert sum(p[1] for p in vol_points) == vol_after - vol_before == rounded(179 * VOLUME_100GB) - rounded(
        59 * VOLUME_100GB)
    vol_window = sim.details("volume", vol_id, start=h1, end=h3)
    assert vol_window["attributes"]["subresource_amount"] == 100 and "usage_time_ACTIVE" not in vol_window["metrics"]
    assert usd(vol_window["metrics"]["price_per_hour"]) == VOLUME_100GB

    credit = sim.ok("GET", "/billing/user-credit/credit")["data"]["credit"]
    assert usd(credit) == 500 - sim.total("vm", vm_id) - sim.total("volume", vol_id)


def test_billing_events_are_the_rate_history_and_add_up_to_total_bill(start) -> None:
    sim = start()
    sim.key_pair()
    [vm] = sim.create("gpu")
    vm_id = vm["id"]
    sim.advance(630.5)
    sim.ok("GET", f"/core/virtual-machines/{vm_id}/hibernate")
    sim.advance(30.5 + 1800)
    sim.ok("GET", f"/core/virtual-machines/{vm_id}/hibernate-restore")
    sim.advance(30.5 + 600)
    sim.ok("DELETE", f"/core/virtual-machines/{vm_id}")
    sim.advance(30.5)

    events = sim.ok("GET", f"/billing/billing/virtual-machine/{vm_id}/billing-events")["billing_events_history"]
    assert [e["event"] for e in events] == ["CREATING", "BUILD", "ACTIVE", "HIBERNATING", "HIBERNATED",
                                            "RESTORING", "ACTIVE", "DELETING", "DELETED"]
    rates = {e["event"]: usd(e["price_per_hour"]) for e in events}
    assert (rates["ACTIVE"], rates["HIBERNATED"], rates["CREATING"], rates["DELETED"]) == (H100, HIBERNATED, 0, 0)
    total = sim.total("vm", vm_id, deleted=True)
    assert sum(usd(e["total_cost"]) for e in events) == total > 0
    hibernated = events[4]
    assert abs(hibernated["event_duration"] - 1800 / 3600) < 1e-3 and usd(hibernated["total_cost"]) > 0
    assert events[-1]["event_duration"] == 0 and usd(events[-1]["total_cost"]) == 0
    assert [e["event"] for e in events][:3] == ["CREATING", "BUILD", "ACTIVE"]
    assert datetime.strptime(events[0]["start"], FORMAT) == datetime.strptime(vm["created_at"], FORMAT)

    # a deleted VM keeps its history; a window keeps the events overlapping it
    _, points = sim.graph("vm", vm_id)
    assert sum(p[1] for p in points) == total
    late = datetime.strptime(events[6]["start"], FORMAT) + timedelta(seconds=1)
    windowed = sim.ok("GET", f"/billing/billing/virtual-machine/{vm_id}/billing-events",
                      start_date=late.strftime(FORMAT))["billing_events_history"]
    assert [e["event"] for e in windowed] == ["ACTIVE", "DELETING", "DELETED"]

    vol = sim.volume("v", size=50)
    sim.advance(120.5)
    sim.ok("DELETE", f"/core/volumes/{vol['id']}")
    vol_events = sim.ok("GET", f"/billing/billing/volume/{vol['id']}/billing-events")["billing_events_history"]
    assert [(e["event"], usd(e["price_per_hour"])) for e in vol_events] == [("CREATED", Decimal("0.005")),
                                                                            ("DELETED", 0)]
    assert sum(usd(e["total_cost"]) for e in vol_events) == sim.total("volume", vol["id"], deleted=True) == rounded(
        2 * Decimal("0.005"))


def test_history_errors_have_the_hyperstack_shape(start) -> None:
    sim = start()
    sim.key_pair()
    [vm] = sim.create("gpu")
    for path in ("/billing/billing/history/virtual-machine/999", "/billing/billing/history/virtual-machine/999/graph",
                 "/billing/billing/history/volume/999", "/billing/billing/history/volume/999/graph",
                 "/billing/billing/virtual-machine/999/billing-events", "/billing/billing/volume/999/billing-events"):
        assert "999" in assert_error(sim.call("GET", path), 404, "not_found")["message"]
    history = f"/billing/billing/history/virtual-machine/{vm['id']}"
    for params, word in (({"start_date": "2026-13-01T00:00:00"}, "start_date"), ({"end_date": "yesterday"}, "end_date"),
                         ({"start_date": "2026-01-01"}, "YYYY-MM-DDTHH:MM:SS"),
                         ({"start_date": "2026-01-02T00:00:00", "end_date": "2026-01-01T00:00:00"}, "after")):
        assert word in assert_error(sim.call("GET", history, **params), 400, "bad_request")["message"]
    assert_error(httpx.get(f"{sim.url}/v1{history}"), 401, "unauthorized")
    events = sim.call("GET", f"/billing/billing/virtual-machine/{vm['id']}/billing-events", end_date="bad")
    assert_error(events, 400, "bad_request")


# -- billing faults ----------------------------------------------------------------------------

def test_null_missing_and_jittered_totals_change_one_answer_only(start) -> None:
    sim = start()
    sim.key_pair()
    [a, b] = sim.create("pair", count=2)
    vol = sim.volume("v")
    sim.advance(630.5)
    truth = {key: item["total_bill"] for key, item in sim.usage().items()}
    assert truth[("vm", a["id"])] > 0

    sim.fault({"kind": "billing_null_total", "resource_type": "vm", "resource_id": b["id"]})
    items = sim.usage()
    assert items[("vm", b["id"])]["total_bill"] is None and "total_bill" in items[("vm", b["id"])]
    assert items[("vm", a["id"])]["total_bill"] == truth[("vm", a["id"])]
    assert sim.usage()[("vm", b["id"])]["total_bill"] == truth[("vm", b["id"])]  # one answer only

    sim.fault({"kind": "billing_missing_total", "resource_type": "volume", "count": 2})
    for _ in range(2):
        items = sim.usage()
        assert "total_bill" not in items[("volume", vol["id"])]
        assert items[("vm", a["id"])]["total_bill"] == truth[("vm", a["id"])]
    assert sim.usage()[("volume", vol["id"])]["total_bill"] == truth[("volume", vol["id"])]

    sim.fault({"kind": "billing_jitter", "resource_id": a["id"]})
    jittered = sim.usage()[("vm", a["id"])]["total_bill"]
    assert usd(jittered) == usd(truth[("vm", a["id"])]) - Decimal("0.000001")
    sim.fault({"kind": "billing_jitter", "amount_usd": "0.25"})  # every item
    items = sim.usage()
    assert all(usd(items[key]["total_bill"]) == max(usd(value) - Decimal("0.25"), Decimal(0))
               for key, value in truth.items())
    assert {key: item["total_bill"] for key, item in sim.usage().items()} == truth  # the next answer is true
    state = sim.admin("GET", "/state")
    assert Decimal(state["vms"][0]["bill"]["total_usd"]) == usd(truth[("vm", a["id"])])  # the meter never moved

    sim.fault({"kind": "billing_missing_item", "resource_type": "vm", "resource_id": a["id"]})
    assert set(sim.usage()) == set(truth) - {("vm", a["id"])} and ("vm", a["id"]) not in sim.usage(deleted=True)
    assert set(sim.usage()) == set(truth)

    sim.fault({"kind": "billing_no_create_time", "resource_type": "vm", "count": 2})
    for _ in range(2):
        items = sim.usage()
        assert "create_time" not in items[("vm", a["id"])] and items[("volume", vol["id"])]["create_time"]
        assert {key: item["total_bill"] for key, item in items.items()} == truth  # nothing else changed
    assert sim.usage()[("vm", a["id"])]["create_time"]

    sim.fault({"kind": "billing_null_total", "deleted": True})  # waits for a ?deleted=true answer
    assert sim.usage()[("vm", a["id"])]["total_bill"] == truth[("vm", a["id"])]
    assert len(sim.admin("GET", "/state")["faults"]) == 1
    sim.usage(deleted=True)
    assert sim.admin("GET", "/state")["faults"] == []


def test_empty_and_reshaped_answers(start) -> None:
    sim = start()
    sim.key_pair()
    sim.create("gpu")
    sim.advance(120.5)
    sim.fault({"kind": "billing_empty"})
    assert sim.raw_usage() == {"status": True, "message": "Getting billing usage success", "data": []}
    assert len(sim.raw_usage()["data"]) == 1

    expected = {
        "no_data": lambda body: body.keys() == {"status", "message"},
        "data_null": lambda body: "data" in body and body["data"] is None,
        "data_object": lambda body: isinstance(body["data"], dict) and len(body["data"]["items"]) == 1,
        "renamed": lambda body: "data" not in body and len(body["usage"]) == 1,
        "bare_list": lambda body: isinstance(body, list) and body[0]["resource_type"] == "vm",
    }
    for shape, check in expected.items():
        sim.fault({"kind": "billing_reshaped", "shape": shape})
        body = sim.raw_usage()
        assert check(body), (shape, body)
        assert len(sim.raw_usage()["data"]) == 1

    sim.fault({"kind": "billing_reshaped", "path_prefix": "/v1/core"})  # never a usage path: waits
    assert len(sim.raw_usage()["data"]) == 1


def test_paged_usage_is_read_whole_by_a_client_that_pages(start) -> None:
    sim = start()
    sim.key_pair()
    sim.create("fleet", count=5)
    for i in range(3):
        sim.volume(f"v{i}")
    sim.advance(60.5)
    whole = sim.raw_usage()
    assert set(whole) == {"status", "message", "data"} and len(whole["data"]) == 8  # no paging asked: as before
    page2 = sim.raw_usage(page=2, pageSize=3)
    assert (page2["page"], page2["page_size"], page2["count"]) == (2, 3, 8)
    assert page2["data"] == whole["data"][3:6]

    sim.fault({"kind": "billing_paged", "page_size": 3})
    first = sim.raw_usage()
    assert (first["data"], first["page"], first["page_size"], first["count"]) == (whole["data"][:3], 1, 3, 8)
    assert sim.raw_usage(page=3, pageSize=100)["data"] == whole["data"][6:]  # the server's cap wins

    settings = Settings(providers={"sim": {"base_url": f"{sim.url}/v1", "api_key": KEY}})
    with open_provider(settings, "sim") as provider:  # the provider's own pager
        read = provider._pages(f"{USAGE}", "data", {}, provider.api.deadline())
    assert read == whole["data"]
    assert sim.admin("GET", "/state")["faults"][0]["count"] is None  # in force until cleared
    sim.admin("DELETE", "/faults")
    assert sim.raw_usage() == whole


BAD_FAULTS = [
    ({"kind": "billing_jitter", "amount_usd": -1}, "amount_usd"),
    ({"kind": "billing_jitter", "amount_usd": "lots"}, "amount_usd"),
    ({"kind": "billing_null_total", "resource_type": "gpu"}, "resource_type"),
    ({"kind": "billing_null_total", "resource_id": "7"}, "resource_id"),
    ({"kind": "billing_reshaped", "shape": "weird"}, "shape"),
    ({"kind": "billing_paged", "page_size": 0}, "page_size"),
    ({"kind": "billing_empty", "resource_id": 3}, "resource_id"),
    ({"kind": "billing_empty", "deleted": "yes"}, "deleted"),
    ({"kind": "billing_empty", "count": 0}, "count"),
    ({"kind": "billing_typo"}, "kind"),
]


def test_bad_fault_bodies_are_refused_naming_the_field(start) -> None:
    sim = start()
    for body, named in BAD_FAULTS:
        response = sim.http.post("/_sim/faults", json=body)
        assert named in assert_error(response, 400, "bad_request")["message"], body
    assert sim.admin("GET", "/state")["faults"] == []
    listed = sim.admin("GET", "/faults")
    assert listed["faults"] == [] and "billing_paged" in listed["kinds"]
    assert all(f'"{kind}"' in listed["doc"] for kind in listed["kinds"])  # every kind is documented


def test_exclude_billing_and_a_vm_outside_the_fleet(start) -> None:
    sim = start()
    sim.key_pair()
    [fleet] = sim.create("spot-demo-1", flavor="sim-cpu-1")
    [dev] = sim.create("dev-box")  # a developer's VM in the same account, through the normal API
    sim.advance(630.5)
    items = sim.usage()
    assert items[("vm", dev["id"])]["name"] == "dev-box" and items[("vm", dev["id"])]["total_bill"] > 0
    assert items[("vm", dev["id"])]["exclude_billing"] is False
    _, points = sim.graph("vm", dev["id"])
    assert sum(p[1] for p in points) == usd(items[("vm", dev["id"])]["total_bill"])

    sim.admin("POST", "/exclude-billing", {"resource_type": "vm", "resource_id": dev["id"]})
    items = sim.usage()
    assert items[("vm", dev["id"])]["exclude_billing"] is True and items[("vm", fleet["id"])]["exclude_billing"] is False
    credit = usd(sim.ok("GET", "/billing/user-credit/credit")["data"]["credit"])
    assert credit == 500 - usd(items[("vm", fleet["id"])]["total_bill"])  # an excluded resource is not charged
    assert sim.admin("GET", "/state")["vms"][1]["bill"]["exclude_billing"] is True
    sim.admin("POST", "/exclude-billing", {"resource_type": "vm", "resource_id": dev["id"], "exclude": False})
    assert sim.usage()[("vm", dev["id"])]["exclude_billing"] is False
    assert_error(sim.http.post("/_sim/exclude-billing", json={"resource_type": "vm", "resource_id": 99}), 404, "not_found")
    refused = sim.http.post("/_sim/exclude-billing", json={"resource_type": "disk", "resource_id": 1})
    assert "resource_type" in assert_error(refused, 400, "bad_request")["message"]


# -- the provider's clock ----------------------------------------------------------------------

def test_every_answer_carries_the_emulated_date(start) -> None:
    sim = start()
    sim.key_pair()

    def date_of(response: httpx.Response) -> datetime:
        raw = response.headers["date"]
        assert raw.endswith(" GMT") and len(response.headers.get_list("date")) == 1
        return parsedate_to_datetime(raw)

    before = date_of(sim.call("GET", "/core/environments"))
    assert abs(before.timestamp() - sim.now_unix()) < 2
    sim.advance(3 * 86400)
    created = sim.call("POST", "/core/virtual-machines", {"name": "late", "environment_name": "sim-local",
                                                          "flavor_name": "sim-cpu-1", "key_name": "k1", "count": 1})
    now = date_of(created)
    assert timedelta(days=3) <= now - before < timedelta(days=3, seconds=3)
    create_time = datetime.strptime(created.json()["instances"][0]["created_at"], FORMAT).replace(tzinfo=UTC)
    assert abs((create_time - now).total_seconds()) <= 1  # the provider's now and its create_time agree
    for response in (httpx.get(f"{sim.url}/v1/core/environments"), sim.call("GET", "/core/virtual-machines/999"),
                     sim.http.get("/_sim/state")):
        assert abs((date_of(response) - now).total_seconds()) < 2


# -- accounts ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_accounts_run_side_by_side_with_their_own_ids(start) -> None:
    first = start()
    second = start("--id-offset", "1000", "--organization-id", "2", account="b")
    for sim in (first, second):
        sim.key_pair()
    [one] = first.create("gpu")
    [two] = second.create("gpu")
    assert (one["id"], two["id"]) == (1, 1001)
    assert second.volume("w")["id"] == 1001
    second.advance(630.5)  # each account has its own clock
    assert second.usage()[("vm", 1001)]["total_bill"] > 0 and second.usage()[("vm", 1001)]["organization_id"] == 2
    assert set(first.usage()) == {("vm", 1)} and first.usage()[("vm", 1)]["total_bill"] == 0
    assert_error(first.call("GET", "/billing/billing/history/virtual-machine/1001"), 404, "not_found")
    assert second.admin("GET", "/state")["settings"]["id_offset"] == 1000


def test_a_state_saved_before_history_still_loads(start, tmp_path: Path) -> None:
    sim = start()
    sim.key_pair()
    [vm] = sim.create("old")
    sim.advance(630.5)
    before = sim.total("vm", vm["id"])
    sim.close()
    path = tmp_path / "a" / "sim-cloud" / "state.json"
    saved = json.loads(path.read_text())
    world = saved["world"]
    world.pop("organization_id")
    for record in world["vms"] + world["volumes"]:
        record.pop("exclude_billing")
        record["meter"] = {k: record["meter"][k] for k in ("minutes", "usd_hour_minutes")}
    path.write_text(json.dumps(saved))

    again = start()
    assert again.total("vm", vm["id"]) == before and again.usage()[("vm", vm["id"])]["organization_id"] == 1
    assert again.ok("GET", f"/billing/billing/virtual-machine/{vm['id']}/billing-events")["billing_events_history"] == []
    again.advance(600)
    _, points = again.graph("vm", vm["id"])  # the history starts at the upgrade
    assert sum(p[1] for p in points) == again.total("vm", vm["id"]) - before
