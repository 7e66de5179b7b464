"""`spot cost reconcile`: the pure matching with hand-computed figures, then the user's view
against `spot sim cloud` (frozen emulated clock, a fleet from `spot up`, `spot sample` after
every emulated minute).

The hand-computed resource of the unit tests: created 09:59:30, billed $0.60/h = $0.01 a minute,
each minute ending at hh:mm:30 (the first at 10:00:30), so the provider's hours are 10:00 $0.60,
11:00 $0.60 and, read at 12:30, 12:00 $0.30 (minutes ending 12:00:30 … 12:29:30). Our samples
are at hh:m5:40 every ten minutes from 10:05:40 to 12:25:40: the total at hh:mm:40 counts the
minutes ended by hh:mm:30, so 10:05:40 reads $0.06 (the baseline), each later sample $0.10 more.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

import pytest

from spotinference.costs.reconcile import (
    AnomalyPoint,
    ResourceRef,
    RunPoint,
    SamplePoint,
    days_of,
    match_resource,
)
from spotinference.providers.base import BilledHour
from tests.conftest import run_spot
from tests.test_fleet import ok
from tests.test_money_e2e import Emulator, cloud, sample  # noqa: F401 - `cloud` is a fixture

D = Decimal
VM = ResourceRef("sim", "vm", "1", "spot-demo-1", "demo", True)


def at(hh: int, mm: int, ss: int = 0) -> datetime:
    return datetime(2026, 3, 1, hh, mm, ss, tzinfo=UTC)


def history(*points: tuple[int, str | None]) -> list[BilledHour]:
    return [BilledHour("vm", "1", at(hh, 0), None if usd is None else D(usd)) for hh, usd in points]


HISTORY = history((10, "0.60"), (11, "0.60"), (12, "0.30"))


def samples(skip: set[datetime] = frozenset(), extra: dict[datetime, str] | None = None) -> list[SamplePoint]:
    """Every ten minutes from 10:05:40 to 12:25:40; ``extra`` adds to the ledger's cumulative
    figure from that sample on (a ledger that counted too much or lost money)."""
    out, t, seq, previous = [], at(10, 5, 40), 0, None
    offset = D(0)
    while t <= at(12, 25, 40):
        seq += 1
        if extra and t in extra:
            offset += D(extra[t])
        if t not in skip:
            minutes = int((t - at(9, 59, 30)).total_seconds() // 60)
            cumulative = D(minutes) / 100 + offset
            out.append(SamplePoint(seq, t, D(0) if previous is None else cumulative - previous, cumulative))
            previous = cumulative
        t += timedelta(minutes=10)
    return out


def match(resource, points, hours, **kw):
    """The fixture samples every ten minutes: only a longer stretch is a gap."""
    return match_resource(resource, points, hours, gap_s=kw.pop("gap_s", 900), **kw)


def rows_by_hour(rows):
    return {r.hour_start.hour: r for r in rows}


def test_boundaries_between_samples_are_carried_not_mismatched() -> None:
    rows = rows_by_hour(match(VM, samples(), HISTORY))
    assert sorted(rows) == [10, 11, 12]
    first, middle, last = rows[10], rows[11], rows[12]
    # 10:00: ours 0.56 - 0.06 (baseline at our first sample); the provider's 0.60 includes 0.06
    # before our first sample and 0.04 (10:56:30 … 10:59:30) read by the 11:05:40 sample.
    assert (first.ours_usd, first.provider_usd, first.difference_usd) == (D("0.50"), D("0.60"), D("-0.10"))
    assert (first.carried_usd, first.unexplained_usd, first.status) == (D("-0.10"), D(0), "carried")
    assert first.cause == "before_first_sample, boundary"
    # 11:00: 0.04 carried in, 0.04 carried out: equal figures.
    assert (middle.ours_usd, middle.provider_usd, middle.difference_usd) == (D("0.60"), D("0.60"), D(0))
    assert (middle.status, middle.cause, middle.samples) == ("matched", None, 6)
    # 12:00: ours 1.46 - 1.16: 0.04 carried in, and 0.04 (12:26:30 … 12:29:30) after our last sample.
    assert (last.ours_usd, last.provider_usd, last.difference_usd, last.status) == (
        D("0.30"), D("0.30"), D(0), "matched")
    days = days_of(rows.values(), D("0.01"))
    assert [(d.ours_usd, d.provider_usd, d.difference_usd, d.unexplained_usd, d.within_tolerance)
            for d in days] == [(D("1.40"), D("1.50"), D("-0.10"), D(0), True)]


def test_spend_after_our_last_sample_is_not_read_yet() -> None:
    rows = rows_by_hour(match(VM, samples(skip={at(12, 25, 40)}), HISTORY))
    # our last sample is 12:15:40 ($1.36): $0.14 of the provider's 12:00 hour came after it.
    assert (rows[12].ours_usd, rows[12].difference_usd, rows[12].carried_usd) == (D("0.20"), D("-0.10"), D("-0.10"))
    assert (rows[12].status, rows[12].cause, rows[12].unexplained_usd) == (
        "carried", "boundary, after_last_sample", D(0))


def test_a_gap_across_a_boundary_is_named() -> None:
    missing = {at(11, 45, 40), at(11, 55, 40), at(12, 5, 40)}
    rows = rows_by_hour(match(VM, samples(skip=missing), HISTORY))
    # 12:00 lies between 11:35:40 ($0.96) and 12:15:40 ($1.36): $0.24 read after the gap.
    assert (rows[11].ours_usd, rows[11].difference_usd, rows[11].carried_usd) == (D("0.40"), D("-0.20"), D("-0.20"))
    assert (rows[11].status, rows[11].cause) == ("carried", "gap")
    assert (rows[12].ours_usd, rows[12].difference_usd, rows[12].status, rows[12].cause) == (
        D("0.50"), D("0.20"), "carried", "gap")
    assert days_of(rows.values(), D("0.01"))[0].within_tolerance


def test_a_failed_run_between_the_samples_is_a_gap_too() -> None:
    # the 10:55:40 and 11:05:40 samples, renumbered 60 and 70: a failed run (65) between them
    points = samples()
    points = [SamplePoint(p.seq * 10, p.provider_clock_at, p.increase_usd, p.cumulative_usd) for p in points]
    runs = [RunPoint(p.seq, True) for p in points] + [RunPoint(65, False)]
    rows = rows_by_hour(match(VM, points, HISTORY, runs=runs))
    assert (rows[10].status, rows[10].cause) == ("carried", "gap")


def test_an_anomaly_names_its_hour_and_changes_no_figure() -> None:
    anomaly = AnomalyPoint("sim", "vm", "1", "decrease", at(11, 35, 40), D("0.959999"), D("0.96"))
    rows = rows_by_hour(match(VM, samples(), HISTORY, anomalies=[anomaly]))
    assert (rows[11].status, rows[11].cause, rows[11].anomalies) == ("matched", "anomaly", ("decrease",))
    assert rows[10].anomalies == () and rows[12].anomalies == ()


def test_money_the_ledger_lost_is_unexplained_and_persists_to_the_end() -> None:
    rows = rows_by_hour(match(VM, samples(extra={at(11, 25, 40): "-0.10"}), HISTORY))
    # 12:00: ours 1.06 before, provider 1.20, the straddle to 12:05:40 is 0.10: 0.04 proven lost.
    assert (rows[11].status, rows[11].unexplained_usd, rows[11].cause) == ("mismatched", D("-0.04"), "unexplained")
    assert rows[12].unexplained_usd == D(0)  # not cancelled by the spend after our last sample
    days = days_of(rows.values(), D("0.01"))
    assert (days[0].unexplained_usd, days[0].within_tolerance) == (D("-0.04"), False)
    assert days_of(rows.values(), D("0.05"))[0].within_tolerance


def test_a_lifetime_counted_twice_is_unexplained() -> None:
    rows = rows_by_hour(match(VM, samples(extra={at(11, 25, 40): "0.80"}), HISTORY))
    # 12:00: ours 1.96 before it, the provider's 1.20: 0.76 proven too much (0.04 hides in the straddle).
    assert (rows[11].status, rows[11].unexplained_usd) == ("mismatched", D("0.76"))
    assert rows[12].unexplained_usd == D(0)
    assert days_of(rows.values(), D("0.01"))[0].unexplained_usd == D("0.76")


def test_outside_the_fleet_is_the_cause_when_nothing_else_is() -> None:
    dev = ResourceRef("sim", "vm", "1", "dev-box", None, False)
    rows = rows_by_hour(match(dev, samples(extra={at(11, 25, 40): "-0.10"}), HISTORY))
    assert (rows[11].status, rows[11].cause) == ("mismatched", "outside the fleet")


def test_an_hour_the_provider_gave_no_figure_for_is_unknown_and_fails_its_day() -> None:
    rows = rows_by_hour(match(VM, samples(), history((10, "0.60"), (11, None), (12, "0.30"))))
    assert rows[11].status == "unknown" and rows[11].difference_usd is None
    assert rows[12].status == "unknown"  # its cumulative figure is unknown too
    assert not days_of(rows.values(), D("0.01"))[0].within_tolerance


def test_since_and_until_keep_whole_provider_hours() -> None:
    rows = match(VM, samples(), HISTORY, since=at(11, 10), until=at(11, 50))
    assert [(r.hour_start, r.status) for r in rows] == [(at(11, 0), "matched")]


def test_a_resource_counted_whole_at_its_first_sample() -> None:
    """A resource created since the account's previous good run: the ledger counts its whole bill
    at the first sample, so the hours before that sample are ours too."""
    points = samples()
    first = points[0]
    points[0] = SamplePoint(first.seq, first.provider_clock_at, first.cumulative_usd, first.cumulative_usd)
    rows = rows_by_hour(match(VM, points, HISTORY))
    assert (rows[10].ours_usd, rows[10].difference_usd, rows[10].status, rows[10].cause) == (
        D("0.56"), D("-0.04"), "carried", "boundary")


# -- the user's view: `spot cost reconcile` against `spot sim cloud` ------------------------------
#
# The emulator's clock is frozen (test_money_e2e's FROZEN_CLOCK) and moved only by /_sim/advance,
# so every billed minute is one the test caused. Before `spot up` the clock is moved to 5 min 20 s
# before an hour boundary B of EMULATED time (its epoch is this machine's clock when it started,
# so B is unknown until asked): the fleet's minutes then end 20 s before each whole minute, and a
# sample after each one-minute advance reads them all. `spot sample` right after `spot up` is the
# account's first good run (a baseline of $0: no minute has ended yet), so the ledger's spend from
# there on is the emulator's whole bill, and the provider's hourly points (from creation) are too.

MICRO = D("0.000001")


def emulated_now(emulator: Emulator) -> datetime:
    return datetime.fromtimestamp(emulator.state()["clock"]["now_unix"], UTC)


def start_before_an_hour(emulator: Emulator) -> datetime:
    """Move the emulated clock to 5 min 20 s before its next hour boundary (at least 10 min on),
    bring the fleet up and take the baseline sample; the boundary B."""
    now = emulated_now(emulator)
    boundary = floor_hour_of(now) + timedelta(hours=1)
    if boundary - now < timedelta(minutes=10):
        boundary += timedelta(hours=1)
    emulator.advance((boundary - timedelta(minutes=5, seconds=20) - now).total_seconds())
    ok("up", "demo")
    sample()
    return boundary


def floor_hour_of(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def minutes_of_sampling(emulator: Emulator, minutes: int, *, before_each=None) -> None:
    for i in range(minutes):
        emulator.advance(60)
        if before_each is not None:
            before_each(i)
        sample()


def reconcile(*args: str, code: int = 0) -> dict:
    result = run_spot("cost", "reconcile", "--json", *args)
    assert result.returncode == code, result.stderr
    return json.loads(result.stdout)


def usd(value: object) -> Decimal:
    return Decimal(str(value))


def ledger_total(emulator: Emulator) -> Decimal:
    """The emulator's bill as the ledger stores it: each resource's total to the micro-dollar."""
    return sum((b.quantize(MICRO, ROUND_HALF_EVEN) for b in emulator.bills().values()), D(0))


@pytest.mark.slow
def test_an_hour_of_samples_reconciles_to_the_cent(cloud: Emulator) -> None:
    boundary = start_before_an_hour(cloud)
    minutes_of_sampling(cloud, 67)  # B - 5:20 … B + 61:40: the hour from B is bracketed by samples
    data = reconcile()
    assert data["ok"] is True and data["unavailable"] == [] and data["anomalies"] == []
    assert usd(data["ours_usd"]) == ledger_total(cloud) > 0
    assert usd(data["provider_usd"]) == cloud.total()  # the emulator's hourly points sum to its bill
    assert usd(data["unexplained_usd"]) == 0
    assert round(usd(data["ours_usd"]), 2) == round(usd(data["provider_usd"]), 2)
    hours = data["hours"]
    kinds = {(h["resource_type"], h["resource_id"]) for h in hours}
    assert {k for k in cloud.bills()} == {(t, int(i)) for t, i in kinds}  # the VM and its weights volume
    assert {h["hour_start"] for h in hours} == {
        (boundary + timedelta(hours=n)).isoformat() for n in (-1, 0, 1)}
    assert all(h["status"] == "matched" and abs(usd(h["difference_usd"])) <= MICRO for h in hours), hours
    full = [h for h in hours if h["hour_start"] == boundary.isoformat() and h["resource_type"] == "vm"]
    assert [(usd(h["ours_usd"]), h["samples"]) for h in full] == [(D("0.5"), 60)]  # $0.50/h, a whole hour
    assert all(d["within_tolerance"] for d in data["days"])
    [credit] = data["credit"]
    assert usd(credit["credit_usd"]) == D(500) - cloud.total()  # the emulator starts every account at $500
    # The table says the same.
    table = run_spot("cost", "reconcile")
    assert table.returncode == 0, table.stderr
    assert "6 matched" in table.stdout and "0 mismatched" in table.stdout and "DIFFERS" not in table.stdout


@pytest.mark.slow
def test_anomalies_are_named_with_their_resource_and_hour_and_the_totals_still_match(cloud: Emulator) -> None:
    boundary = start_before_an_hour(cloud)
    [vm] = cloud.vms()

    def faults(i: int) -> None:
        if i == 20:  # the sample at B + 15:40 reads the VM $0.05 low: below its high-water mark
            cloud.fault(kind="billing_jitter", amount_usd=0.05, resource_type="vm", resource_id=vm["id"])
        if i == 30:  # the sample at B + 25:40 has no total for the VM
            cloud.fault(kind="billing_null_total", resource_type="vm", resource_id=vm["id"], deleted=False)

    minutes_of_sampling(cloud, 40, before_each=faults)
    data = reconcile()
    assert data["ok"] is True
    assert usd(data["ours_usd"]) == ledger_total(cloud)
    assert usd(data["provider_usd"]) == cloud.total()
    assert usd(data["unexplained_usd"]) == 0
    named = sorted((a["resource_type"], a["resource_id"], a["kind"], a["hour_start"]) for a in data["anomalies"])
    assert named == [("vm", str(vm["id"]), "decrease", boundary.isoformat()),
                     ("vm", str(vm["id"]), "missing_total", boundary.isoformat())]
    [row] = [h for h in data["hours"] if h["anomalies"]]
    assert (row["resource_type"], row["resource_id"], row["hour_start"]) == ("vm", str(vm["id"]), boundary.isoformat())
    assert sorted(row["anomalies"]) == ["decrease", "missing_total"]
    assert (row["status"], row["cause"]) == ("matched", "anomaly")
    table = run_spot("cost", "reconcile")
    assert table.returncode == 0 and "anomal" in table.stdout and boundary.strftime("%Y-%m-%d %H:00") in table.stdout


@pytest.mark.slow
def test_a_sampler_gap_across_an_hour_boundary_says_gap(cloud: Emulator) -> None:
    boundary = start_before_an_hour(cloud)
    minutes_of_sampling(cloud, 2)  # … B - 3:20
    cloud.advance(8 * 60)  # no sample from B - 3:20 to B + 4:40
    minutes_of_sampling(cloud, 3)
    data = reconcile()
    assert data["ok"] is True and usd(data["unexplained_usd"]) == 0
    assert usd(data["ours_usd"]) == ledger_total(cloud) and usd(data["provider_usd"]) == cloud.total()
    vm = {h["hour_start"]: h for h in data["hours"] if h["resource_type"] == "vm"}
    before, after = vm[(boundary - timedelta(hours=1)).isoformat()], vm[boundary.isoformat()]
    # The VM's minutes ending B - 2:20 … B - 0:20 (3 × $0.50/60) were read after B, by the gap's first sample.
    carried = D("0.5") * 3 / 60
    assert (before["status"], before["cause"]) == ("carried", "gap")
    assert abs(usd(before["difference_usd"]) + carried) <= MICRO
    assert (after["status"], after["cause"]) == ("carried", "gap")
    assert abs(usd(after["difference_usd"]) - carried) <= MICRO
    assert all(d["within_tolerance"] for d in data["days"])
    # --since/--until are the provider's clock, in whole hours: only the hour from B.
    window = ("--since", boundary.isoformat(), "--until", (boundary + timedelta(minutes=30)).isoformat())
    only = reconcile(*window)
    assert {h["hour_start"] for h in only["hours"]} == {boundary.isoformat()}
    assert [h for h in only["hours"] if h["resource_type"] == "vm"] == [after]
    # A struggling provider: each retry of a history call is a line on stderr (JSON lines with
    # --json), as in every command that waits on the provider; the figures are the same.
    cloud.fault(kind="server_error", count=2, status=503, path_prefix="/v1/billing/billing/history")
    table = run_spot("cost", "reconcile", *window)
    assert table.returncode == 0, table.stderr
    retries = [line for line in table.stderr.splitlines() if "retrying:" in line]
    assert len(retries) == 2 and all("/billing/billing/history" in line and ": 503" in line for line in retries), \
        table.stderr
    cloud.fault(kind="server_error", count=1, status=502, path_prefix="/v1/billing/billing/history")
    result = run_spot("cost", "reconcile", "--json", *window)
    assert result.returncode == 0, result.stderr
    [retry] = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert retry["event"] == "retry" and retry["answer"].startswith("502")
    assert json.loads(result.stdout)["hours"] == only["hours"]


@pytest.mark.slow
def test_a_sample_that_read_too_much_fails_its_day_with_exit_8(cloud: Emulator, home) -> None:
    """A total read $0.05 too high once (edited into the store, as a provider glitch upward
    would leave it): the ledger counts it, the later samples fall below that high-water mark
    (recorded decreases), and the provider's history proves the excess."""
    from spotinference.store import Store

    boundary = start_before_an_hour(cloud)
    minutes_of_sampling(cloud, 8)  # … B + 2:40
    [vm] = cloud.vms()
    with Store(home).transaction() as con:
        con.execute("""UPDATE billing_samples SET total_bill_usd = total_bill_usd + 0.05
                       WHERE resource_type = 'vm' AND run_id = (SELECT run_id FROM sample_runs ORDER BY seq DESC LIMIT 1)""")
    minutes_of_sampling(cloud, 3)  # … B + 5:40: $0.025 more, still under the false high-water mark
    result = run_spot("cost", "reconcile", "--json")
    assert result.returncode == 8, result.stderr
    assert result.stderr.startswith("error: reconciliation differs past $0.01 per resource-day: ")
    assert f"vm {vm['id']} on {boundary.date().isoformat()}" in result.stderr and len(result.stderr.splitlines()) == 1
    data = json.loads(result.stdout)
    assert data["ok"] is False
    [row] = [h for h in data["hours"] if h["status"] == "mismatched"]
    assert (row["resource_type"], row["resource_id"], row["hour_start"], row["cause"]) == (
        "vm", str(vm["id"]), boundary.isoformat(), "anomaly")
    # $0.05 less the 3 minutes billed since ($0.025), to the ledger's micro-dollar (the provider keeps 10 places)
    assert usd(row["unexplained_usd"]) == usd(data["unexplained_usd"])
    assert abs(usd(row["unexplained_usd"]) - D("0.025")) <= MICRO
    assert [a["kind"] for a in data["anomalies"]] == ["decrease"] * 3
    assert run_spot("cost", "reconcile", "--json", "--tolerance-usd", "0.03").returncode == 0


# -- the queries, on a seeded store: placement by the provider's clock ----------------------------

def test_the_queries_place_samples_by_the_providers_clock(home) -> None:
    """Runs at 10:00 … 10:05 (our clock) whose provider clock reads an hour and 20 s ahead; the
    10:03 run failed; the VM's totals 1.00, 1.10, 1.05 (a decrease), -, -, 1.30 (10:04: no total)."""
    from spotinference.reports import run_query
    from spotinference.store import Store
    from tests.test_cost_queries import Seed

    seed = Seed(Store(home))
    totals = ["1.00", "1.10", "1.05", None, None, "1.30"]
    for minute, total in enumerate(totals):
        t = at(10, minute)
        run_id = seed.run(t, ok=minute != 3)
        if minute != 3:
            seed.sample(run_id, t, "7", total)
    seed.write()
    with Store(home).transaction() as con:
        con.execute("UPDATE sample_runs SET provider_clock_at = started_at + INTERVAL 1 HOUR + INTERVAL 20 SECOND WHERE ok")
    store = Store(home)
    window = {"window_start": at(11, 0), "window_end": at(12, 0)}  # the PROVIDER's 11:00 hour
    rows = run_query(store, "spend_by_resource_sample", **window).records()
    assert [(r["provider_clock_at"], r["total_bill_usd"], r["increase_usd"], r["cumulative_usd"]) for r in rows] == [
        (at(11, 0, 20), D("1.00"), D(0), D("1.00")),  # the account's first good run: a baseline
        (at(11, 1, 20), D("1.10"), D("0.10"), D("1.10")),
        (at(11, 2, 20), D("1.05"), D(0), D("1.10")),  # a decrease counts nothing; the high-water mark stays
        (at(11, 5, 20), D("1.30"), D("0.20"), D("1.30")),
    ]
    assert {(r["resource_type"], r["resource_id"], r["tier"], r["in_fleet"]) for r in rows} == {("vm", "7", "t1", True)}
    assert run_query(store, "spend_by_resource_sample", window_start=at(10, 0), window_end=at(11, 0)).rows == []
    runs = run_query(store, "sample_runs_provider_clock", **window).records()
    assert [(r["seq"], r["ok"]) for r in runs] == [(1, True), (2, True), (3, True), (4, False), (5, True), (6, True)]
    anomalies = run_query(store, "billing_anomalies_provider_clock", **window).records()
    assert [(a["kind"], a["resource_id"], a["provider_clock_at"]) for a in anomalies] == [
        ("decrease", "7", at(11, 2, 20)), ("missing_total", "7", at(11, 4, 20))]


def test_samples_in_rolled_up_days_are_still_read_one_by_one(home) -> None:
    """Three days of a sample every 10 minutes (a run exactly at each midnight too), rolled up:
    the query still gives every sample with the same figures, never a day's roll-up row."""
    from spotinference.costs import rollup
    from spotinference.reports import run_query
    from spotinference.store import Store
    from tests.test_cost_queries import Seed

    seed = Seed(Store(home))
    start = datetime(2026, 3, 1, tzinfo=UTC)
    for k in range(3 * 144):
        t = start + timedelta(minutes=10 * k)
        seed.sample(seed.run(t), t - timedelta(seconds=0.5), "7", str(D("0.10") * k))  # sampled_at = t exactly
    store = seed.write()
    with store.transaction() as con:
        con.execute("UPDATE sample_runs SET provider_clock_at = started_at + INTERVAL 20 SECOND")
    window = {"window_start": start, "window_end": start + timedelta(days=3)}
    before = run_query(store, "spend_by_resource_sample", **window).records()
    assert len(before) == 3 * 144
    assert [(r["increase_usd"], r["cumulative_usd"]) for r in before[:2]] == [(D(0), D(0)), (D("0.10"), D("0.10"))]
    assert all(r["increase_usd"] == D("0.10") for r in before[1:])
    assert before[-1]["cumulative_usd"] == D("0.10") * (3 * 144 - 1)
    assert rollup.refresh(store, start + timedelta(days=3, hours=2)) == 3
    assert run_query(store, "spend_by_resource_sample", **window).records() == before


# -- time-scaled: samples at whatever offsets the machine gives -----------------------------------

@pytest.fixture
def scaled_cloud(tmp_path):
    """`spot sim cloud` at 60× (an emulated hour a real minute): samples land anywhere in the
    minute and every hour boundary falls between two of them, as with a real sampler."""
    from tests.servers import start_sim_cloud
    from tests.test_money_e2e import write_config

    server, root = start_sim_cloud(tmp_path / "cloud", "--time-scale", "60", "--create-seconds", "0",
                                   "--hibernate-seconds", "0", "--restore-seconds", "0", "--delete-seconds", "0")
    emulator = Emulator(f"{root}/v1", server)
    write_config(emulator.base_url)
    yield emulator
    run_spot("down", "demo", "--terminate", "--yes")
    server.stop()


@pytest.mark.slow
def test_a_time_scaled_hour_reconciles_with_every_boundary_carried_not_mismatched(scaled_cloud: Emulator) -> None:
    ok("up", "demo")
    # Jump to 3 emulated minutes before an hour boundary B, then sample at whatever offsets the
    # machine gives until 5 minutes past B + 1 h: a first partial hour, a whole one, a last partial
    # one (~68 real seconds, where starting wherever `up` left the clock took 70 to 130).
    now = emulated_now(scaled_cloud)
    boundary = floor_hour_of(now) + timedelta(hours=1)
    if boundary - now < timedelta(minutes=3):
        boundary += timedelta(hours=1)
    scaled_cloud.advance((boundary - timedelta(minutes=3) - now).total_seconds())
    samples = 0
    while emulated_now(scaled_cloud) < boundary + timedelta(hours=1, minutes=5):
        sample()
        samples += 1
        time.sleep(0.2)
    data = reconcile()
    assert data["ok"] is True and data["unavailable"] == [], data
    assert usd(data["unexplained_usd"]) == 0
    hours = data["hours"]
    assert len({h["hour_start"] for h in hours}) >= 3  # the first and last partial, at least one whole hour
    assert {h["status"] for h in hours} <= {"matched", "carried"}
    assert {h["cause"] for h in hours if h["status"] == "carried"} <= {
        "boundary", "gap", "after_last_sample", "before_first_sample", "boundary, after_last_sample",
        "before_first_sample, boundary", "before_first_sample, after_last_sample"}
    # Our spend is what the provider billed up to our last sample: its history can only be ahead.
    assert usd(data["provider_usd"]) >= usd(data["ours_usd"]) > 0
    assert usd(data["difference_usd"]) == usd(data["carried_usd"])
    vm_whole = [h for h in hours if h["resource_type"] == "vm" and h["hour_start"] == boundary.isoformat()]
    assert [usd(h["provider_usd"]) for h in vm_whole] == [D("0.5")]  # a whole hour at $0.50/h, by the provider


def test_the_verdict_fails_on_a_day_past_tolerance_or_a_resource_not_compared() -> None:
    from spotinference.costs.reconcile import Reconciliation, Unavailable

    lost = match(VM, samples(extra={at(11, 25, 40): "-0.10"}), HISTORY)
    result = Reconciliation(None, None, D("0.01"), hours=lost, days=days_of(lost, D("0.01")))
    failure = result.failure()
    assert not result.ok and failure is not None and failure.exit_code == 8
    assert str(failure) == "reconciliation differs past $0.01 per resource-day: vm 1 on 2026-03-01 (-$0.040000 unexplained)"
    fine = match(VM, samples(), HISTORY)
    assert Reconciliation(None, None, D("0.01"), hours=fine, days=days_of(fine, D("0.01"))).failure() is None
    missing = Reconciliation(None, None, D("0.01"), unavailable=[Unavailable(VM, "Virtual machine with id 1 not found")])
    assert str(missing.failure()) == ("reconciliation incomplete: 1 resource(s) not compared, without provider history "
                                      "(Virtual machine with id 1 not found)")
