"""Invoice-true under billing data as providers really send it (issue 15), from the user's side:
`spot sample`'s exit code and JSON, `spot cost --json`, against `spot sim cloud` and its faults.

Each test first builds resources with a long history (a lifetime bill of ~$100 on the VM), because
that is what the old rules added again on a null total, a micro-dollar dip or an empty answer.
The truth is the emulator's own meters (`/_sim/state`), quantized to the ledger's micro-dollars,
between the samples that bound the window. The emulator runs at a thousandth of real time, so
its clock only moves when a test advances it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from spotinference.billing.sampler import sample as library_sample
from spotinference.config import load_settings
from spotinference.providers.base import VmSpec
from spotinference.store import Store
from tests.conftest import run_spot
from tests.servers import start_sim_cloud

pytestmark = pytest.mark.slow  # each test runs one or two emulators and a dozen CLI processes

MICRO = Decimal("0.000001")
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test"
LIFETIME_S = 200 * 3600  # 200 h of sim-cpu-1 at $0.50/h: a $100 lifetime bill before we sample
STEP_S = 180


class Account:
    """One emulated provider account, as spot's config names it."""

    def __init__(self, name: str, root: str) -> None:
        self.name = name
        self.root = root

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"

    def state(self) -> dict:
        return httpx.get(f"{self.root}/_sim/state", timeout=10).json()

    def bills(self) -> dict[str, Decimal]:
        """Each resource's cumulative bill by name, quantized as the ledger stores it."""
        state = self.state()
        return {r["name"]: Decimal(r["bill"]["total_usd"]).quantize(MICRO) for r in state["vms"] + state["volumes"]}

    def ids(self) -> dict[str, int]:
        state = self.state()
        return {r["name"]: r["id"] for r in state["vms"] + state["volumes"]}

    def advance(self, seconds: float) -> None:
        httpx.post(f"{self.root}/_sim/advance", json={"seconds": seconds}, timeout=10).raise_for_status()

    def fault(self, **fault: object) -> None:
        httpx.post(f"{self.root}/_sim/faults", json=fault, timeout=10).raise_for_status()


def config(*accounts: Account, budget: str = "") -> None:
    """Each account as a provider with one tier (`<name>-tier`, volume `<name>-weights`)."""
    lines = []
    for a in accounts:
        lines += [f"[providers.{a.name}]", 'kind = "hyperstack"', f'base_url = "{a.base_url}"', "emulator = true",
                  "retry_deadline_s = 1", "retry_base_s = 0.1", "request_timeout_s = 10", "",
                  f"[tiers.{a.name}-tier]", f'provider = "{a.name}"', 'flavor = "sim-cpu-1"',
                  'environment = "sim-local"', 'engine = "sim"', f'model = "model-{a.name}"',
                  f'weights_volume = "{a.name}-weights"', "weights_volume_gb = 10", ""]
    Path("spot.toml").write_text("\n".join(lines) + budget)


def build(account: Account, *, outside: bool = True) -> None:
    """The fleet's VM and weights volume (spot's names), and a developer's VM outside the fleet."""
    settings, _ = load_settings(None)
    from spotinference.providers.registry import open_provider

    with open_provider(settings, account.name) as p:
        p.ensure_key_pair("test-key", "sim-local", KEY)
        p.ensure_volume(f"{account.name}-weights", "sim-local", 10)
        p.create_vm(VmSpec(name=f"spot-{account.name}-tier-1", flavor="sim-cpu-1", environment="sim-local",
                           key_name="test-key"))
        if outside:
            p.create_vm(VmSpec(name="dev-box", flavor="sim-cpu-1", environment="sim-local", key_name="test-key"))
    account.advance(LIFETIME_S)


def fleet_bill(account: Account) -> Decimal:
    return sum((v for k, v in account.bills().items() if k != "dev-box"), Decimal(0))


def sample() -> tuple[int, dict]:
    result = run_spot("sample", "--json")
    return result.returncode, json.loads(result.stdout)


def good_sample() -> dict:
    code, data = sample()
    assert code == 0 and data["ok"] is True, data
    return data


def cost_since(since: str, *extra: str) -> dict:
    result = run_spot("cost", "--json", "--since", since, *extra)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def usd(value: object) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def start(tmp_path: Path, name: str, *flags: str) -> tuple[object, Account]:
    server, root = start_sim_cloud(tmp_path / name, "--time-scale", "0.001", "--create-seconds", "0",
                                   "--delete-seconds", "0", *flags)
    return server, Account(name, root)


@pytest.fixture
def sim(tmp_path: Path):
    server, account = start(tmp_path, "sim")
    config(account)
    build(account)
    yield account
    server.stop()


def test_null_totals_dips_and_missing_keys_never_add_a_lifetime_bill(sim: Account, home: Path) -> None:
    first = good_sample()  # the account's first run: every bill is a baseline
    start_fleet, start_dev = fleet_bill(sim), sim.bills()["dev-box"]
    vm = sim.ids()["spot-sim-tier-1"]
    assert sim.bills()["spot-sim-tier-1"] > 99  # the lifetime bill the old rules added again

    sim.advance(STEP_S)
    good_sample()
    sim.fault(kind="billing_jitter", resource_type="vm", resource_id=vm, amount_usd="0.000002")
    dipped = good_sample()  # the same minute read 2 µ$ low: an anomaly, never a counter reset
    sim.advance(STEP_S)
    sim.fault(kind="billing_null_total", resource_type="vm", resource_id=vm)
    nulled = good_sample()  # a missing sample for the VM, not $0 (and not a failed run)
    sim.advance(STEP_S)
    sim.fault(kind="billing_missing_total", resource_type="vm", resource_id=vm)
    good_sample()
    sim.advance(STEP_S)
    good_sample()
    true_delta = fleet_bill(sim) - start_fleet

    assert usd(dipped["spend_usd_since_last"]) == 0  # not the lifetime bill, not negative
    assert usd(nulled["spend_usd_since_last"]) < Decimal("0.001")  # the volume's minutes only
    report = cost_since(first["sampled_at"])
    assert report["observable"] is True
    assert usd(report["spend_usd"]) == true_delta > 0  # exactly the meters' growth, to the micro-dollar
    assert usd(report["outside_fleet_usd"]) == sim.bills()["dev-box"] - start_dev  # its own line
    kinds = sorted(a["kind"] for a in report["anomalies"])
    assert kinds == ["decrease", "missing_total", "missing_total"]
    assert all(a["resource_id"] == str(vm) for a in report["anomalies"])


def test_an_emptied_reshaped_or_cut_answer_is_a_failed_run_naming_what_is_missing(sim: Account, home: Path) -> None:
    first = good_sample()
    start_fleet = fleet_bill(sim)
    sim.advance(STEP_S)
    good_sample()

    sim.fault(kind="billing_empty")
    code, data = sample()
    assert code != 0 and data["ok"] is False
    assert "spot-sim-tier-1" in data["error"] and "neither the active nor the deleted list" in data["error"]
    sim.fault(kind="billing_reshaped", shape="renamed")
    code, data = sample()
    assert code != 0 and "`data`" in data["error"] and "usage" in data["error"]
    sim.fault(kind="billing_missing_item", resource_type="volume", resource_id=sim.ids()["sim-weights"])
    code, data = sample()
    assert code != 0 and "sim-weights" in data["error"]
    result = run_spot("sample")  # the one line a cron log shows
    assert result.returncode == 0

    sim.advance(STEP_S)
    sim.fault(kind="billing_paged", page_size=1, count=2)  # active and deleted lists, one item a page
    paged = good_sample()
    assert paged["resources"] == 3
    report = cost_since(first["sampled_at"])
    assert usd(report["spend_usd"]) == fleet_bill(sim) - start_fleet
    assert report["accounts"][0]["failed_runs"] == 3


def test_a_clock_stepped_back_is_recorded_in_sequence_and_counts_once(sim: Account, home: Path) -> None:
    settings, _ = load_settings(None)
    store = Store(settings.home)
    now = datetime.now(UTC) - timedelta(minutes=10)
    first = library_sample(settings, store, clock=lambda: now)
    start_fleet = fleet_bill(sim)
    sim.advance(STEP_S)
    library_sample(settings, store, clock=lambda: now + timedelta(seconds=60))
    sim.advance(STEP_S)
    behind = library_sample(settings, store, clock=lambda: now + timedelta(seconds=30))  # NTP stepped it back
    assert behind.ok
    sim.advance(STEP_S)
    library_sample(settings, store, clock=lambda: now + timedelta(seconds=90))
    with store.reading() as con:
        steps = con.execute("SELECT clock_behind_s FROM sample_runs ORDER BY seq").fetchall()
    assert [s[0] for s in steps][:2] == [None, None] and steps[2][0] == pytest.approx(30, abs=1)
    report = cost_since(first.sampled_at.isoformat())
    assert usd(report["spend_usd"]) == fleet_bill(sim) - start_fleet
    doctor = run_spot("doctor", "--json")
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert "stepped behind" in checks["ledger"]["detail"] and checks["ledger"]["warning"] is True


def test_excluded_items_never_count(sim: Account, home: Path) -> None:
    first = good_sample()
    start_fleet = fleet_bill(sim)
    httpx.post(f"{sim.root}/_sim/exclude-billing", json={"resource_type": "vm", "resource_id": sim.ids()["dev-box"],
                                                         "exclude": True}, timeout=10).raise_for_status()
    sim.advance(STEP_S)
    good_sample()
    report = cost_since(first["sampled_at"])
    assert usd(report["spend_usd"]) == fleet_bill(sim) - start_fleet
    assert usd(report["outside_fleet_usd"]) == 0  # the developer's VM is excluded from billing


def test_a_second_account_starts_from_its_own_baseline_even_after_an_empty_first_answer(tmp_path: Path,
                                                                                       home: Path) -> None:
    s1, one = start(tmp_path, "one")
    s2, two = start(tmp_path, "two", "--id-offset", "1000")
    try:
        config(one, two)
        build(one)
        build(two)
        config(one)  # the second account is added later
        first = good_sample()
        one_start = fleet_bill(one)
        one.advance(STEP_S)
        good_sample()

        config(one, two)
        two.fault(kind="billing_empty")  # its first answer comes back empty: still no lifetime bill
        joined = good_sample()
        assert [r["resources"] for r in joined["runs"]] == [3, 0]
        one.advance(STEP_S)
        two.advance(STEP_S)
        two_start = fleet_bill(two)
        good_sample()  # two's resources appear: they existed before its previous good run, a baseline
        one.advance(STEP_S)
        two.advance(STEP_S)
        good_sample()
        true_delta = (fleet_bill(one) - one_start) + (fleet_bill(two) - two_start)
        assert fleet_bill(two) > 99  # a lifetime bill that must not be counted
        report = cost_since(first["sampled_at"])
        assert usd(report["spend_usd"]) == true_delta
        assert [(a["provider"], a["observable"]) for a in report["accounts"]] == [("one", True), ("two", True)]
    finally:
        s1.stop()
        s2.stop()


@pytest.mark.parametrize("first_answer", ["empty", "without_the_fleet"])
def test_an_incomplete_first_answer_then_items_without_create_time_never_count_a_lifetime_bill(
        sim: Account, home: Path, first_answer: str) -> None:
    # A provider that never says when it created a resource, and an account whose first answer
    # left resources out: when they appear at the next run they have billed for 200 h, which is
    # no resource created since one run ago. A VM really created between runs still counts whole.
    ids = sim.ids()
    sim.fault(kind="billing_no_create_time", count=40)  # every answer of this test
    if first_answer == "empty":
        sim.fault(kind="billing_empty", count=2)  # the active and the deleted list
    else:  # the fleet's VM left out (the emulator drops one resource per answer)
        sim.fault(kind="billing_missing_item", resource_type="vm", resource_id=ids[f"spot-{sim.name}-tier-1"],
                  count=2)
    first = good_sample()
    assert first["runs"][0]["resources"] == (0 if first_answer == "empty" else 2)  # the volume and the dev box
    at_first = sim.bills()
    sim.advance(STEP_S)
    at_second = sim.bills()
    assert at_second[f"spot-{sim.name}-tier-1"] > 99  # the lifetime bill that must not be counted
    # The truth: from the first run for what its answer held, from the second for what it left out.
    in_first = {f"{sim.name}-weights"} if first_answer == "without_the_fleet" else set()
    baseline = {name: (at_first if name in in_first else at_second)[name] for name in at_second if name != "dev-box"}
    good_sample()
    settings, _ = load_settings(None)
    from spotinference.providers.registry import open_provider

    with open_provider(settings, sim.name) as p:  # new since the last run, and undated too
        p.create_vm(VmSpec(name=f"spot-{sim.name}-tier-2", flavor="sim-cpu-1", environment="sim-local",
                           key_name="test-key"))
    sim.advance(STEP_S)
    good_sample()
    sim.advance(STEP_S)
    good_sample()
    new_vm = sim.bills()[f"spot-{sim.name}-tier-2"]
    assert new_vm > 0
    report = cost_since(first["sampled_at"])
    assert usd(report["spend_usd"]) == fleet_bill(sim) - sum(baseline.values())  # the new VM's whole bill too
    # What was not counted is shown, with what the provider said.
    events = json.loads(run_spot("events", "--json").stdout)
    unexplained = {(e["detail"]["resource_type"], e["detail"]["resource_id"]): e for e in events
                   if e["kind"] == "billing_anomaly" and e["detail"]["anomaly"] == "unexplained_first_total"}
    vm, volume = ("vm", str(ids[f"spot-{sim.name}-tier-1"])), ("volume", str(ids[f"{sim.name}-weights"]))
    assert vm in unexplained and (volume in unexplained) == (first_answer == "empty")
    assert ("vm", str(sim.ids()[f"spot-{sim.name}-tier-2"])) not in unexplained
    vm_event = unexplained[vm]
    assert "no create time" in vm_event["message"] and "counted nothing" in vm_event["message"]
    assert Decimal(vm_event["detail"]["total_bill_usd"]) > 99
    ledger = next(c for c in json.loads(run_spot("doctor", "--json").stdout)["checks"] if c["name"] == "ledger")
    assert "first total(s) too large to be new, with no create time" in ledger["detail"], ledger


def test_one_failing_account_is_a_gap_in_its_own_coverage(tmp_path: Path, home: Path) -> None:
    s1, one = start(tmp_path, "one")
    s2, two = start(tmp_path, "two", "--id-offset", "1000")
    try:
        config(one, two)
        build(one, outside=False)
        build(two, outside=False)
        good_sample()
        two.fault(kind="server_error", status=503, count=1000, path_prefix="/v1/billing")
        code, data = sample()
        assert code != 0 and [r["ok"] for r in data["runs"]] == [True, False]
        result = run_spot("cost", "--json", "--days", "1", "--strict")
        assert result.returncode == 9  # --strict: the window is not complete
        report = json.loads(result.stdout)
        by_account = {a["provider"]: a for a in report["accounts"]}
        assert by_account["two"]["failed_runs"] == 1 and "503" in by_account["two"]["last_error"]
        assert report["complete"] is False
    finally:
        s1.stop()
        s2.stop()
