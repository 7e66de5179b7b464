"""`spot cost --focus FILE.csv|FILE.parquet`: FOCUS 1.2 rows from the ledger, read back with DuckDB.

The data directory is a real DuckDB ledger seeded as the sampler writes it (tests.test_cost_queries.Seed):
three days of one run a minute, a GPU VM and its weights volume in the fleet, a developer's VM in the
same account outside the fleet, and a billing gap of two and a half hours.
"""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from spotinference.store import Store
from tests.test_cost_queries import Seed, at

# FOCUS 1.2's Mandatory columns, as listed by the specification itself: FOCUS_Spec repository
# (github.com/FinOps-Open-Cost-and-Usage-Spec/FOCUS_Spec), tag v1.2, specification/columns/*.md,
# every column whose "Column Feature Level" is Mandatory. Kept here, apart from the code, on purpose.
FOCUS_1_2_MANDATORY = {
    "BilledCost", "BillingAccountId", "BillingAccountName", "BillingCurrency", "BillingPeriodEnd",
    "BillingPeriodStart", "ChargeCategory", "ChargeClass", "ChargeDescription", "ChargePeriodEnd",
    "ChargePeriodStart", "ContractedCost", "EffectiveCost", "InvoiceIssuerName", "ListCost",
    "PricingQuantity", "PricingUnit", "ProviderName", "PublisherName", "ServiceCategory", "ServiceName",
}
# The Conditional columns whose condition holds here (usage of identifiable resources), and ours.
APPLICABLE = {"ConsumedQuantity", "ConsumedUnit", "ResourceId", "ResourceName", "ResourceType",
              "x_Tier", "x_TokensServed", "x_UsdPerMTok"}

WINDOW = ["--since", "2026-03-01T10:00", "--until", "2026-03-03T10:00"]
GAP = (at(13, 0, day=2), at(15, 30, day=2))  # no sampler run at all


@pytest.fixture(scope="module")
def seeded_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """09:59 on day 1 to 10:01 on day 3, a run a minute except in GAP. Fleet: vm-1 bills $0.10 a
    minute ($6/h), vol-1 $0.01 a minute; outside: dev-box $1 a minute. Requests on days 1 and 2.
    Written once (it takes a while) and copied into each test's own data directory."""
    built = tmp_path_factory.mktemp("focus-ledger") / "home"
    seed = Seed(Store(built))
    t, k = at(9, 59), 0
    while t < at(10, 1, day=3):
        if not GAP[0] <= t < GAP[1]:
            run_id = seed.run(t)
            seed.sample(run_id, t, "vm-1", str(Decimal("0.1") * k))
            seed.sample(run_id, t, "vol-1", str(Decimal("0.01") * k), kind="volume", rate="0.6")
            seed.sample(run_id, t, "dev-box", str(Decimal(1) * k), tier=None, rate="60")
        t, k = t + timedelta(minutes=1), k + 1
    seed.request(at(10, 10), 1500, 500)
    seed.request(at(10, 20), 300, 100)
    seed.request(at(18, 5, day=2), 100, 0)  # served, but no output tokens
    seed.write(anomalies_at_once=True)
    return built


@pytest.fixture
def ledger(seeded_once: Path, home: Path) -> Path:
    shutil.copytree(seeded_once, home)
    return home


def spend_usd(spot) -> Decimal:
    result = spot("cost", *WINDOW, "--json")
    assert result.returncode == 0, result.stderr
    return Decimal(str(json.loads(result.stdout, parse_float=Decimal)["spend_usd"]))


def read_back(path: Path) -> list[dict]:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    reader = "read_csv" if path.suffix == ".csv" else "read_parquet"
    cursor = con.execute(f"SELECT * FROM {reader}(?)", [str(path)])
    cols = [d[0] for d in cursor.description]
    return [dict(zip(cols, row, strict=True)) for row in cursor.fetchall()]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_focus_file_has_the_required_columns_and_sums_to_spot_cost(spot, ledger: Path, tmp_path: Path,
                                                                   suffix: str) -> None:
    target = tmp_path / f"focus{suffix}"
    result = spot("cost", *WINDOW, "--focus", str(target))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"wrote {target}: ")
    rows = read_back(target)
    assert rows
    assert FOCUS_1_2_MANDATORY | APPLICABLE <= set(rows[0])
    assert not [c for c in rows[0] if c not in FOCUS_1_2_MANDATORY | APPLICABLE and not c.startswith("x_")
                and c not in {"ChargeFrequency", "ListUnitPrice", "PricingCategory"}]
    # Exactly `spot cost`'s spend, to the micro-dollar (the fleet only: dev-box is outside it).
    billed = sum(Decimal(str(r["BilledCost"])) for r in rows)
    assert billed.quantize(Decimal("0.000001")) == spend_usd(spot).quantize(Decimal("0.000001"))
    assert billed == Decimal("316.8")  # 48 h × ($6 + $0.60) / h, the gap's spend counted after it
    assert {r["ResourceId"] for r in rows} == {"vm-1", "vol-1"}
    for r in rows:
        assert r["BilledCost"] == r["EffectiveCost"] == r["ListCost"] == r["ContractedCost"]
        assert r["BillingCurrency"] == "USD" and r["ChargeCategory"] == "Usage" and r["ChargeClass"] is None
        assert r["ChargePeriodEnd"] - r["ChargePeriodStart"] == timedelta(hours=1)
        assert r["ChargePeriodStart"].minute == 0 and r["ChargePeriodStart"].tzinfo is not None
        assert r["BillingPeriodStart"] <= r["ChargePeriodStart"] < r["BillingPeriodEnd"]
        assert r["ConsumedUnit"] == r["PricingUnit"] == "Hours"
    pairs = [(r["ResourceId"], r["ChargePeriodStart"]) for r in rows]
    assert len(pairs) == len(set(pairs))  # one row per resource per hour


def test_focus_rows_by_hour(spot, ledger: Path, tmp_path: Path) -> None:
    target = tmp_path / "focus.parquet"
    assert spot("cost", *WINDOW, "--focus", str(target)).returncode == 0
    rows = {(r["ResourceId"], r["ChargePeriodStart"].isoformat()): r for r in read_back(target)}
    first = rows[("vm-1", "2026-03-01T10:00:00+00:00")]
    assert Decimal(str(first["BilledCost"])) == Decimal(6) and Decimal(str(first["ConsumedQuantity"])) == 1
    assert first["ResourceType"] == "Virtual Machine" and first["ServiceCategory"] == "Compute"
    assert first["x_Tier"] == "t1" and first["x_TokensServed"] == 600
    assert Decimal(str(first["x_UsdPerMTok"])) == Decimal("11000")  # the tier's $6.60 over 600 output tokens
    volume = rows[("vol-1", "2026-03-01T10:00:00+00:00")]
    assert volume["ResourceType"] == "Volume" and volume["ServiceCategory"] == "Storage"
    assert Decimal(str(volume["BilledCost"])) == Decimal("0.6")
    # No tokens: NULL, never 0; tokens but no output: 0 served and no $/Mtok.
    quiet = rows[("vm-1", "2026-03-01T11:00:00+00:00")]
    assert quiet["x_TokensServed"] is None and quiet["x_UsdPerMTok"] is None
    no_output = rows[("vm-1", "2026-03-02T18:00:00+00:00")]
    assert no_output["x_TokensServed"] == 0 and no_output["x_UsdPerMTok"] is None
    # The gap: no row in 13:00 and 14:00 (not $0); what accrued in it is on 15:00's row.
    assert ("vm-1", "2026-03-02T13:00:00+00:00") not in rows and ("vm-1", "2026-03-02T14:00:00+00:00") not in rows
    after = rows[("vm-1", "2026-03-02T15:00:00+00:00")]
    assert Decimal(str(after["BilledCost"])) == Decimal(18)  # 13:00-15:59: three hours at $6


def test_focus_gap_is_said_and_strict_exits_9(spot, ledger: Path, tmp_path: Path) -> None:
    target = tmp_path / "focus.csv"
    result = spot("cost", *WINDOW, "--focus", str(target), "--strict")
    assert result.returncode == 9, result.stderr
    assert target.exists()  # written, and said to be incomplete
    assert "COVERAGE GAPS" in result.stderr
    assert "hour(s) touched a billing gap: an hour without a good sample has no row (not $0)" in result.stderr
    assert "Traceback" not in result.stderr


def test_focus_unobservable_window_writes_nothing(spot, ledger: Path, tmp_path: Path) -> None:
    target = tmp_path / "focus.csv"
    result = spot("cost", "--since", "2026-03-02T13:30", "--until", "2026-03-02T14:30", "--focus", str(target))
    assert result.returncode == 9
    assert "no FOCUS file written" in result.stderr and "Traceback" not in result.stderr
    assert not target.exists()


@pytest.mark.parametrize("name", ["focus.json", "focus", "no-such-folder/focus.csv"])
def test_focus_bad_target_is_one_line_exit_2(spot, ledger: Path, tmp_path: Path, name: str) -> None:
    target = tmp_path / name
    result = spot("cost", *WINDOW, "--focus", str(target))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and "--focus" in lines[0] and ("ending in .csv or .parquet" in lines[0] or "does not exist" in lines[0])
    assert "Traceback" not in result.stderr and not target.exists()


def test_focus_with_another_output_is_refused(spot, ledger: Path, tmp_path: Path) -> None:
    result = spot("cost", *WINDOW, "--focus", str(tmp_path / "f.csv"), "--json")
    assert result.returncode == 2 and "--focus writes a file of its own" in result.stderr
