"""queries/*.sql and the cost library on real DuckDB files, against hand-computed answers.

Each scenario seeds explicit rows through the Store: sampler runs once a minute, billing rows with
round cumulative bills, request rows with round token counts, so every expected figure below can
be checked with pencil and paper.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from spotinference.billing import anomalies
from spotinference.costs import Window, report, rollup
from spotinference.reports import available_queries, query_parameters, run_query
from spotinference.store import Store

T0 = datetime(2026, 3, 1, 9, 50, tzinfo=UTC)  # the first sampler run of most scenarios
D = Decimal


def at(hh: int, mm: int, ss: float = 0, day: int = 1) -> datetime:
    return datetime(2026, 3, day, hh, mm, tzinfo=UTC) + timedelta(seconds=ss)


class Seed:
    """Writes explicit rows: runs, samples, requests."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.runs: list[tuple] = []
        self.samples: list[tuple] = []
        self.requests: list[tuple] = []

    def run(self, t: datetime, ok: bool = True) -> str:
        run_id = f"run-{t.isoformat()}"
        self.runs.append((run_id, "sim", t, t + timedelta(seconds=1), ok, None if ok else "503", 0, len(self.runs) + 1,
                          t + timedelta(seconds=0.5) if ok else None))
        return run_id

    def sample(self, run_id: str, t: datetime, resource: str, total: str | None, *, kind: str = "vm",
               tier: str | None = "t1", rate: str | None = "6", active: bool = True) -> None:
        self.samples.append((run_id, t + timedelta(seconds=0.5), "sim", resource, kind, resource, tier,
                             None if rate is None else D(rate), None if total is None else D(total), active, "{}"))

    def request(self, finished: datetime, prompt: int, completion: int, *, key: str | None = "key-a",
                tier: str | None = "t1", model: str = "m1", started: datetime | None = None) -> None:
        n = len(self.requests)
        self.requests.append((f"req-{n}", "gw", key, model, tier, "node", started or finished - timedelta(seconds=1),
                              finished, prompt, completion, 200))

    def every_minute(self, start: datetime, end: datetime, bills: dict[str, callable], skip=()) -> None:
        """One ok run a minute in [start, end); bills maps resource -> f(minute index) -> total."""
        t, k = start, 0
        while t < end:
            if t not in skip:
                run_id = self.run(t)
                for resource, bill in bills.items():
                    total = bill(k)
                    if total is not None:
                        self.sample(run_id, t, resource, total)
            t, k = t + timedelta(minutes=1), k + 1

    def write(self, *, anomalies_at_once: bool = False) -> Store:
        """Everything in one transaction; then the anomalies, by the sampler's own per-run call or,
        for the multi-day seeds (thousands of runs, ~20 ms a call), by `record_all_runs`."""
        with self.store.transaction() as con:
            if self.runs:
                insert_rows(con, "INSERT INTO sample_runs (run_id, provider, started_at, finished_at, ok, error, "
                                 "resource_count, seq, sampled_at) VALUES", self.runs)
            if self.samples:
                # The fleet: every resource with a tier, as the sampler adopts it (outside=True
                # samples carry no tier and stay outside). The first sample of each resource adopts
                # it, as one INSERT ... ON CONFLICT DO NOTHING per sample would.
                fleet: dict[tuple, tuple] = {}
                for s in self.samples:
                    if s[6] is not None:
                        fleet.setdefault((s[2], s[4], s[3]), (s[2], s[4], s[3], s[5], s[6], s[1]))
                insert_rows(con, "INSERT INTO fleet_resources (provider, resource_type, resource_id, name, tier, "
                                 "recorded_at, how) VALUES", [(*row, "adopted") for row in fleet.values()],
                            suffix=" ON CONFLICT DO NOTHING")
                insert_rows(con, "INSERT INTO billing_samples (run_id, sampled_at, provider, resource_id, resource_type, "
                                 "name, tier, usd_per_hour, total_bill_usd, active, raw) VALUES", self.samples)
            if self.requests:
                insert_rows(con, "INSERT INTO requests (request_id, gateway_id, key_id, model, tier, node, started_at, "
                                 "finished_at, prompt_tokens, completion_tokens, http_status) VALUES", self.requests)
            runs = {(s[0], s[1]) for s in self.samples}
            if anomalies_at_once and runs:
                record_all_runs(con, min(t for _, t in runs), max(t for _, t in runs))
            else:
                for run_id, t in runs:  # what the sampler records per run
                    anomalies.record(con, run_id, t)
        return self.store


def record_all_runs(con, first: datetime, last: datetime) -> None:
    """What `anomalies.record` records for every run sampled in [first, last], in one statement:
    the sampler's own SQL with the one-run filters taken off and the window widened to all the runs.
    On a fresh ledger (nothing rolled up) billing_increases reads every sample from the first
    whatever the window, so each sample's verdict is the one its own run's call gives: the rows are
    the same (compared on the roll-up, focus and plot seeds). Small seeds, and so every anomaly
    test, keep the per-run call."""
    sql = anomalies._RECORD
    for one_run, every_run in [("billing_increases($at, $at + INTERVAL 1 MICROSECOND)", "billing_increases($first, $last)"),
                               ("WHERE i.run_id = $run_id AND ", "WHERE "),
                               ("WHERE run_id = $run_id AND ", "WHERE ")]:
        assert sql.count(one_run) == 1, f"anomalies._RECORD changed: {one_run!r} not found once"
        sql = sql.replace(one_run, every_run)
    con.execute(sql, {"first": first, "last": last + timedelta(microseconds=1)})


def insert_rows(con, insert: str, rows: list[tuple], *, suffix: str = "", chunk: int = 500) -> None:
    """The same rows as ``executemany``, a few hundred per statement: DuckDB's executemany runs one
    statement per row (milliseconds each), which made seeding three days of minutes take a minute."""
    for i in range(0, len(rows), chunk):
        part = rows[i:i + chunk]
        one = "(" + ", ".join("?" * len(part[0])) + ")"
        con.execute(f"{insert} {', '.join([one] * len(part))}{suffix}", [v for row in part for v in row])


@pytest.fixture
def seed(home: Path) -> Seed:
    return Seed(Store(home))


def q(store: Store, name: str, start: datetime, end: datetime) -> list[dict]:
    return run_query(store, name, window_start=start, window_end=end).records()


def spend(store: Store, start: datetime, end: datetime) -> Decimal | None:
    return q(store, "spend", start, end)[0]["spend_usd"]


def params_for(name: str) -> dict:
    values = {"window_start": at(10, 0), "window_end": at(11, 0), "last": 10, "after": at(10, 0),
              "since": at(10, 0), "key_name": None, "model": None, "status_min": None, "status_max": None, "tier": None}
    return {p: values[p] for p in query_parameters(name)}


# -- every file runs on an empty database ---------------------------------------------------------

@pytest.mark.parametrize("name", available_queries())
def test_every_query_runs_on_an_empty_database(home: Path, name: str) -> None:
    result = run_query(Store(home), name, **params_for(name))
    assert result.columns
    text = (Path(__file__).parents[1] / "queries" / f"{name}.sql").read_text()
    assert text.startswith("-- Question:"), f"{name}.sql needs its header comment"


def test_an_empty_database_is_unobservable_not_zero(home: Path) -> None:
    store = Store(home)
    assert q(store, "spend", at(10, 0), at(11, 0))[0] == {
        "spend_usd": None, "outside_fleet_usd": None, "account_spend_usd": None, "observable": False,
        "good_runs": 0, "resources": 0}
    head = q(store, "cost_per_mtok", at(10, 0), at(11, 0))[0]
    assert head["spend_usd"] is None and head["usd_per_mtok_output"] is None and head["observable"] is False
    assert q(store, "coverage", at(10, 0), at(11, 0)) == []  # no account has ever been sampled
    assert q(store, "coverage_gaps", at(10, 0), at(11, 0)) == []
    result = report(store, Window(at(10, 0), at(11, 0)), refresh_rollup=False, accounts=["sim"])
    assert result.observable is False and result.spend_usd is None and result.complete is False
    assert [(g.provider, g.minutes) for g in result.gaps] == [("sim", 60)]


# -- spend ------------------------------------------------------------------------------------------

def test_resources_created_and_deleted_inside_the_window(seed: Seed) -> None:
    # vm-a runs all along: 100.00 at 09:50 (the first run: a baseline, not spend), +0.10 a minute.
    # vm-b appears at 10:20 with 0.05 already billed, +0.20 a minute, deleted at 10:40 (bill frozen).
    def vm_b(k: int) -> str | None:
        if k < 30:
            return None
        return str(D("0.05") + D("0.20") * min(k - 30, 20))

    seed.every_minute(T0, at(11, 10), {"vm-a": lambda k: str(D(100) + D("0.1") * k), "vm-b": vm_b})
    store = seed.write()
    assert spend(store, at(10, 0), at(11, 0)) == D("6.00") + D("4.05")
    # vm-b's last increase lands on its 10:40 sample; after that it bills nothing.
    assert spend(store, at(10, 40), at(11, 0)) == D("2.00") + D("0.20")
    assert spend(store, at(10, 41), at(11, 0)) == D("1.90")
    assert spend(store, T0, at(10, 0)) == D("0.90")  # 09:50 is the baseline: 9 increases of 0.10
    by_resource = q(store, "spend_by_type", at(10, 0), at(11, 0))
    assert by_resource == [{"resource_type": "vm", "in_fleet": True, "resources": 2, "spend_usd": D("10.05"), "share": 1.0}]


def test_a_decrease_counts_nothing_and_never_the_whole_bill_again(seed: Seed) -> None:
    # A cumulative bill only grows: a lower total is an anomaly, and spend resumes only past the
    # high-water mark (5.1), so no dollar is counted twice.
    bills = {"vm-c": lambda k: ["4.8", "4.9", "5.0", "5.1", "0.3", "0.4", "5.3"][k]}
    seed.every_minute(at(9, 58), at(10, 5), bills)
    store = seed.write()
    # 09:59 +0.1 | 10:00 +0.1, 10:01 +0.1, 10:02 0 (anomaly), 10:03 0 (anomaly), 10:04 +0.2
    assert spend(store, at(10, 0), at(10, 4)) == D("0.2")
    assert spend(store, at(10, 2), at(10, 4)) == D("0")
    assert spend(store, at(9, 58), at(10, 5)) == D("0.5")  # = 5.3 - 4.8, the true growth
    anomalies = q(store, "billing_anomalies", at(9, 58), at(10, 5))
    assert [(a["sampled_at"].minute, a["kind"], a["total_bill_usd"], a["previous_high_usd"]) for a in anomalies] == [
        (2, "decrease", D("0.3"), D("5.1")), (3, "decrease", D("0.4"), D("5.1"))]


def test_downward_jitter_and_missing_totals_keep_the_spend_exact(seed: Seed) -> None:
    # A micro-dollar dip, then a missing (NULL) total: neither is spend, nothing is lost.
    bills = {"vm-j": lambda k: ["10.000000", "10.100000", "10.099999", None, "10.400000"][k]}
    seed.every_minute(at(9, 58), at(10, 3), bills)
    run_of_null = seed.runs[3][0]  # every_minute skips a None total: the 10:01 run gets a NULL one
    seed.sample(run_of_null, at(10, 1), "vm-j", None)
    store = seed.write()
    assert spend(store, at(9, 58), at(10, 3)) == D("0.4")
    assert spend(store, at(10, 2), at(10, 3)) == D("0.3")  # the next known total carries it
    kinds = [(a["sampled_at"].minute, a["kind"]) for a in q(store, "billing_anomalies", at(9, 58), at(10, 3))]
    assert kinds == [(0, "decrease"), (1, "missing_total")]


def test_a_sampler_gap_is_coverage_not_zero_spend(seed: Seed) -> None:
    # One run a minute 09:50-11:10, except none from 10:10 to 10:29 and a FAILED run at 10:30 whose
    # stray row (999) must be ignored. The bill accrues 0.10 a minute all along.
    gap = {at(10, m) for m in range(10, 31)}
    seed.every_minute(T0, at(11, 10), {"vm": lambda k: str(D("0.1") * k)}, skip=gap)
    bad = seed.run(at(10, 30), ok=False)
    seed.sample(bad, at(10, 30), "vm", "999")
    store = seed.write()
    [cov] = q(store, "coverage", at(10, 0), at(11, 0))
    assert cov["provider"] == "sim"
    assert (cov["window_minutes"], cov["covered_minutes"]) == (60, 39)
    assert cov["coverage"] == pytest.approx(0.65)
    assert [(g["gap_start"], g["gap_end"], g["minutes"]) for g in q(store, "coverage_gaps", at(10, 0), at(11, 0))] == [
        (at(10, 10), at(10, 31), 21)]
    # Nothing is lost: the 10:31 sample carries the 2.20 billed since 10:09.
    assert spend(store, at(10, 0), at(11, 0)) == D("6.0")
    assert spend(store, at(10, 31), at(10, 32)) == D("2.2")
    # A window inside the gap has no good sample: unobservable, never $0.
    inside = q(store, "cost_per_mtok", at(10, 12), at(10, 28))[0]
    assert inside["observable"] is False and inside["spend_usd"] is None
    result = report(store, Window(at(10, 12), at(10, 28)), by="tier", refresh_rollup=False)
    assert result.observable is False and result.spend_usd is None and result.usd_per_mtok_output is None
    assert all(row["spend_usd"] is None for row in result.breakdown)


def test_an_idle_fleet_with_healthy_billing_costs_zero_and_has_no_rate(seed: Seed) -> None:
    # Runs every minute; one hibernated VM whose bill does not move, and nothing served.
    seed.every_minute(at(10, 0), at(11, 0), {"vm-asleep": lambda k: "42.000000"})
    store = seed.write()
    head = q(store, "cost_per_mtok", at(10, 0), at(11, 0))[0]
    assert head == {"spend_usd": D("0.000000"), "outside_fleet_usd": D("0.000000"), "prompt_tokens": 0, "completion_tokens": 0,
                    "usd_per_mtok_output": None, "usd_per_mtok_total": None, "observable": True}
    result = report(store, Window(at(10, 0), at(11, 0)), refresh_rollup=False)
    assert (result.observable, result.spend_usd, result.usd_per_mtok_output, result.coverage) == (True, D(0), None, 1.0)


def test_runs_without_any_resource_still_make_the_window_observable(seed: Seed) -> None:
    seed.every_minute(at(10, 0), at(11, 0), {})
    store = seed.write()
    assert q(store, "spend", at(10, 0), at(11, 0))[0] == {
        "spend_usd": D(0), "outside_fleet_usd": D(0), "account_spend_usd": D(0), "observable": True,
        "good_runs": 60, "resources": 0}


# -- tokens and cost per token ------------------------------------------------------------------------

def test_cost_per_million_tokens_counts_requests_by_finish_time(seed: Seed) -> None:
    seed.every_minute(at(9, 59), at(11, 1), {"vm": lambda k: str(D("0.1") * k)})
    seed.request(at(10, 30), 3000, 1000)
    seed.request(at(10, 59, 59.9), 1000, 1000, started=at(10, 58))
    seed.request(at(11, 0, 0.5), 5000, 5000, started=at(10, 59))  # finished after the window
    store = seed.write()
    tokens = q(store, "tokens", at(10, 0), at(11, 0))[0]
    assert tokens == {"requests": 2, "prompt_tokens": 4000, "completion_tokens": 2000, "total_tokens": 6000,
                      "unknown_prompt_rows": 0, "unknown_completion_rows": 0}
    head = q(store, "cost_per_mtok", at(10, 0), at(11, 0))[0]
    assert head["spend_usd"] == D("6.0")
    assert head["usd_per_mtok_output"] == D("3000")  # 6.00 / 2000 × 1e6
    assert head["usd_per_mtok_total"] == D("1000")  # 6.00 / 6000 × 1e6


def test_unknown_token_counts_are_left_out_of_the_sums_and_counted_apart(seed: Seed) -> None:
    # A stream aborted before its first chunk: the engine prefilled a prompt no usage described.
    seed.every_minute(at(9, 59), at(11, 1), {"vm": lambda k: str(D("0.1") * k)})
    seed.request(at(10, 30), 3000, 1000)
    seed.request(at(10, 31), None, 40)  # prompt unknown, 40 tokens seen before the abort
    seed.request(at(10, 32), None, None, key="key-b")  # a non-streamed request whose client left
    store = seed.write()
    tokens = q(store, "tokens", at(10, 0), at(11, 0))[0]
    assert tokens == {"requests": 3, "prompt_tokens": 3000, "completion_tokens": 1040, "total_tokens": 4040,
                      "unknown_prompt_rows": 2, "unknown_completion_rows": 1}
    by_key = {r["key_id"]: r for r in q(store, "spend_by_key", at(10, 0), at(11, 0))}
    assert by_key["key-a"]["completion_tokens"] == 1040  # an unknown prompt does not hide the row's output
    by_model = q(store, "spend_by_model", at(10, 0), at(11, 0))
    assert sum(r["completion_tokens"] for r in by_model) == 1040


def test_per_key_statements_sum_exactly_to_the_spend(seed: Seed) -> None:
    # $1.000000 over three keys with one token each: 333 333 µ$ each plus one left-over micro-dollar,
    # which goes to the smallest key_id; requests without a key have their own line.
    seed.every_minute(at(9, 59), at(10, 11), {"vm": lambda k: str(D("0.1") * k)})
    for key in ("key-b", "key-a", "key-c"):
        seed.request(at(10, 5), 1, 0, key=key)
    store = seed.write()
    rows = q(store, "spend_by_key", at(10, 0), at(10, 10))
    assert [(r["key_id"], r["statement_usd"]) for r in rows] == [
        ("key-a", D("0.333334")), ("key-b", D("0.333333")), ("key-c", D("0.333333"))]
    assert sum(r["statement_usd"] for r in rows) == spend(store, at(10, 0), at(10, 10)) == D("1.0")


def test_per_key_statements_with_uneven_shares_and_anonymous_requests(seed: Seed) -> None:
    seed.every_minute(at(9, 59), at(10, 11), {"vm": lambda k: str(D("0.0777777") * k)[:10]})
    seed.request(at(10, 1), 700, 300, key="key-a")  # 1000 tokens
    seed.request(at(10, 2), 1, 1, key=None)  # 2 tokens
    seed.request(at(10, 3), 333, 0, key="key-b")  # 333 tokens
    store = seed.write()
    total = spend(store, at(10, 0), at(10, 10))
    rows = q(store, "spend_by_key", at(10, 0), at(10, 10))
    assert {r["key_id"] for r in rows} == {"key-a", "key-b", "(no key)"}
    assert sum(r["statement_usd"] for r in rows) == total
    assert sum(r["token_share"] for r in rows) == pytest.approx(1.0)


def test_spend_without_tokens_is_one_unattributed_statement(seed: Seed) -> None:
    seed.every_minute(at(9, 59), at(10, 11), {"vm": lambda k: str(D("0.1") * k)})
    store = seed.write()
    rows = q(store, "spend_by_key", at(10, 0), at(10, 10))
    assert [(r["key_id"], r["statement_usd"]) for r in rows] == [(None, D("1.0"))]
    models = q(store, "spend_by_model", at(10, 0), at(10, 10))
    assert [(r["model"], r["tiers"], r["spend_usd"]) for r in models] == [(None, "t1", D("1.0"))]


def test_spend_by_tier_and_model(seed: Seed) -> None:
    # t1 bills 0.10/min, t2 0.30/min, a shared volume without a tier 0.01/min. t1 served m1 and m1b
    # (3:1 tokens), t2 served nothing.
    t, k = at(9, 59), 0
    while t < at(10, 11):
        run_id = seed.run(t)
        seed.sample(run_id, t, "vm-1", str(D("0.1") * k), tier="t1")
        seed.sample(run_id, t, "vm-2", str(D("0.3") * k), tier="t2")
        seed.sample(run_id, t, "vol", str(D("0.01") * k), kind="volume", tier=None)  # outside the fleet
        t, k = t + timedelta(minutes=1), k + 1
    seed.request(at(10, 1), 200, 100, model="m1")
    seed.request(at(10, 2), 50, 50, model="m1b")
    store = seed.write()
    tiers = {r["tier"]: (r["spend_usd"], r["completion_tokens"], r["usd_per_mtok_output"])
             for r in q(store, "spend_by_tier", at(10, 0), at(10, 10))}
    assert tiers == {"t1": (D("1.0"), 150, D("6666.666667")), "t2": (D("3.0"), 0, None)}
    models = {r["model"]: (r["tiers"], r["spend_usd"]) for r in q(store, "spend_by_model", at(10, 0), at(10, 10))}
    assert models == {"m1": ("t1", D("0.75")), "m1b": ("t1", D("0.25")), None: ("t2", D("3.0"))}
    kinds = {(r["resource_type"], r["in_fleet"]): (r["spend_usd"], r["share"])
             for r in q(store, "spend_by_type", at(10, 0), at(10, 10))}
    assert kinds == {("vm", True): (D("4.0"), 1.0), ("volume", False): (D("0.1"), None)}
    assert q(store, "spend", at(10, 0), at(10, 10))[0]["outside_fleet_usd"] == D("0.1")


def test_spend_by_resource_names_each_resource_and_whether_it_still_bills(seed: Seed) -> None:
    # The operator's question after `spot down --terminate`: which resource still bills? The VM
    # bills 0.10/min until it is deleted at 10:05 (no rate, its total frozen); its weights volume
    # keeps billing 0.01/min; a dev box outside the fleet bills 1/min.
    t, k = at(9, 59), 0
    while t < at(10, 11):
        run_id = seed.run(t)
        gone = t >= at(10, 5)
        seed.sample(run_id, t, "vm-1", str(D("0.1") * min(k, 6)), rate=None if gone else "6", active=not gone)
        seed.sample(run_id, t, "weights-1", str(D("0.01") * k), kind="volume", rate="0.6")
        seed.sample(run_id, t, "dev-box", str(D(1) * k), tier=None, rate="60")
        t, k = t + timedelta(minutes=1), k + 1
    store = seed.write()
    rows = q(store, "spend_by_resource", at(10, 0), at(10, 10))
    assert [(r["resource_type"], r["resource_id"], r["name"], r["tier"], r["in_fleet"], r["spend_usd"], r["usd_per_hour"])
            for r in rows] == [
        ("vm", "vm-1", "vm-1", "t1", True, D("0.6"), None),               # its last increase: 10:05
        ("volume", "weights-1", "weights-1", "t1", True, D("0.10"), D("0.6")),  # still billing
        ("vm", "dev-box", "dev-box", None, False, D("10"), D("60")),       # the rest of the account
    ]
    assert [r["share"] for r in rows] == pytest.approx([0.6 / 0.7, 0.1 / 0.7, None])
    assert rows[1]["last_sampled_at"] == at(10, 9) + timedelta(seconds=0.5)
    # The per-type rows are the same money, grouped.
    by_type = {(r["resource_type"], r["in_fleet"]): r["spend_usd"] for r in q(store, "spend_by_type", at(10, 0), at(10, 10))}
    assert by_type == {("vm", True): D("0.6"), ("volume", True): D("0.10"), ("vm", False): D("10")}


# -- days --------------------------------------------------------------------------------------------

def test_by_day_attributes_an_increase_to_the_day_of_its_later_sample(seed: Seed) -> None:
    # +1.00 a minute; runs at 23:56-23:59 and 00:01-00:02 (none at 00:00): the 2.00 billed between
    # 23:59 and 00:01 belongs to the second day. Tokens go to the day their request finished.
    for minute, total in [((23, 56), "0"), ((23, 57), "1"), ((23, 58), "2"), ((23, 59), "3")]:
        run_id = seed.run(at(*minute))
        seed.sample(run_id, at(*minute), "vm", total)
    for minute, total in [((0, 1), "5"), ((0, 2), "6")]:
        run_id = seed.run(at(*minute, day=2))
        seed.sample(run_id, at(*minute, day=2), "vm", total)
    seed.request(at(23, 59, 59.9), 10, 1000)
    seed.request(at(0, 0, 30, day=2), 10, 500, started=at(23, 59, 50))
    store = seed.write()
    days = q(store, "spend_by_day", at(23, 57), at(0, 3, day=2))
    assert [(r["day"].isoformat(), r["spend_usd"], r["completion_tokens"], r["usd_per_mtok_output"]) for r in days] == [
        ("2026-03-01", D("3"), 1000, D("3000")), ("2026-03-02", D("3"), 500, D("6000"))]
    assert [r["coverage"] for r in days] == [pytest.approx(1.0), pytest.approx(2 / 3)]
    assert sum(r["spend_usd"] for r in days) == spend(store, at(23, 57), at(0, 3, day=2))


# -- utilisation ------------------------------------------------------------------------------------

def test_utilisation_paid_gpu_hours_vs_busy_hours(seed: Seed) -> None:
    # The VM bills 6.00/h (full) 10:00-10:29 and 0.30/h (hibernated) 10:30-10:59; one request is in
    # flight 10:05:30-10:07:10 (minutes 10:05, 10:06, 10:07).
    t = at(10, 0)
    for k in range(60):
        run_id = seed.run(t + timedelta(minutes=k))
        seed.sample(run_id, t + timedelta(minutes=k), "vm", str(k), rate="6" if k < 30 else "0.3")
    seed.request(at(10, 7, 10), 10, 10, started=at(10, 5, 30))
    store = seed.write()
    rows = q(store, "utilisation", at(10, 0), at(11, 0))
    assert rows == [{"tier": "t1", "vms": 1, "paid_gpu_hours": 0.5, "busy_hours": 0.05, "busy_share": pytest.approx(0.1)}]


# -- the roll-up gives the raw answers ------------------------------------------------------------

def test_the_daily_rollup_changes_no_figure(seed: Seed) -> None:
    # Three days: a steady VM, a VM created on day 2 with a counter reset on day 3, a sampler gap
    # across midnight, a failed run; requests every hour.
    start = datetime(2026, 3, 1, 0, 0, tzinfo=UTC)
    gap = {datetime(2026, 3, 2, 23, 50, tzinfo=UTC) + timedelta(minutes=m) for m in range(30)}

    def late(k: int) -> str | None:
        if k < 1440 + 600:
            return None
        v = D("0.02") * (k - 2040)
        return str(v if k < 2 * 1440 + 300 else D("0.02") * (k - 2 * 1440 - 300))

    seed.every_minute(start, start + timedelta(days=3), {"steady": lambda k: str(D(7) + D("0.05") * k), "late": late}, skip=gap)
    bad = seed.run(datetime(2026, 3, 2, 12, 0, 30, tzinfo=UTC), ok=False)
    seed.sample(bad, datetime(2026, 3, 2, 12, 0, 30, tzinfo=UTC), "steady", "0")
    for h in range(72):
        seed.request(start + timedelta(hours=h, minutes=17), 100 + h, 10 + h, key=f"key-{h % 3}")
    store = seed.write(anomalies_at_once=True)
    windows = [
        Window(start, start + timedelta(days=3)),
        Window(start + timedelta(hours=5, minutes=3), start + timedelta(days=2, hours=7)),
        Window(start + timedelta(days=1), start + timedelta(days=2)),
        Window(start + timedelta(days=2, hours=23), start + timedelta(days=3)),
    ]
    names = [n for n in available_queries() if "window_start" in query_parameters(n)]
    raw = {(w, n): q(store, n, w.start, w.end) for w in windows for n in names}
    assert rollup.refresh(store, start + timedelta(days=3, hours=2)) == 3
    with store.reading() as con:
        assert con.execute("SELECT count(DISTINCT day) FROM billing_daily").fetchone() == (3,)
    for (w, n), rows in raw.items():
        assert q(store, n, w.start, w.end) == rows, (n, w)
    assert rollup.refresh(store, start + timedelta(days=3, hours=2)) == 0  # nothing new to roll


def test_a_second_refresh_does_not_walk_the_quiet_days_again(seed: Seed) -> None:
    # The ledger's samples stop on day 2 and the report runs two months later (a fleet torn down,
    # `spot cost` still run now and then). The quiet days add no rows, yet each is checked once:
    # a second refresh at the same or a slightly later time reports no day walked again.
    start = datetime(2026, 3, 1, 0, 0, tzinfo=UTC)
    seed.every_minute(start, start + timedelta(days=2), {"steady": lambda k: str(D(7) + D("0.05") * k)})
    seed.request(start + timedelta(hours=3), 100, 10)
    store = seed.write()
    later = start + timedelta(days=61, hours=2)
    raw = q(store, "spend", start, later)
    assert rollup.refresh(store, later) == 61  # day 1 through day 61: two with rows, 59 quiet
    assert rollup.refresh(store, later) == 0
    assert rollup.refresh(store, later + timedelta(days=1)) == 1  # one new settled day, not 62
    with store.reading() as con:
        assert con.execute("SELECT count(DISTINCT day) FROM billing_daily").fetchone() == (2,)
    assert q(store, "spend", start, later) == raw
