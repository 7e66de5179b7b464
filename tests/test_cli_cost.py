"""`spot cost` end to end: the installed console script on a seeded data directory."""

from __future__ import annotations

import csv
import io
import json
import shutil
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from spotinference.store import Store
from tests.test_cost_queries import Seed, at

WINDOW = ["--since", "2026-03-01T10:00", "--until", "2026-03-01T11:00"]


@pytest.fixture(scope="module")
def seeded_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """09:59-11:00 one run a minute except 10:30-10:39; the fleet: vm +0.10/min and its volume
    +0.01/min (tier t1); outside the fleet, in the same account: a developer's VM +1.00/min;
    3 requests: key-a 1500 prompt + 500 completion, key-b 300 + 100 (m1), 100 + 0.
    Written once and copied into each test's own data directory (a second or two each)."""
    built = tmp_path_factory.mktemp("cli-cost-ledger") / "home"
    seed = Seed(Store(built))
    t, k = at(9, 59), 0
    while t < at(11, 1):
        if not at(10, 30) <= t < at(10, 40):
            run_id = seed.run(t)
            seed.sample(run_id, t, "vm-1", str(Decimal("0.1") * k))
            seed.sample(run_id, t, "vol-1", str(Decimal("0.01") * k), kind="volume", rate="0.6")
            seed.sample(run_id, t, "dev-box", str(Decimal(1) * k), tier=None, rate="60")
        t, k = t + timedelta(minutes=1), k + 1
    seed.request(at(10, 10), 1500, 500, key="key-a")
    seed.request(at(10, 20), 300, 100, key="key-b")
    seed.request(at(10, 50), 100, 0, key="key-b")
    seed.write()
    return built


@pytest.fixture
def seeded(seeded_once: Path, home: Path) -> Path:
    shutil.copytree(seeded_once, home)
    return home


def cost_json(spot, *args: str) -> dict:
    result = spot("cost", *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_json_headline(spot, seeded: Path) -> None:
    data = cost_json(spot, *WINDOW)
    assert {"window_start", "window_end", "spend_usd", "prompt_tokens", "completion_tokens",
            "usd_per_mtok_output", "coverage", "observable"} <= set(data)
    assert data["window_start"] == "2026-03-01T10:00:00+00:00" and data["window_end"] == "2026-03-01T11:00:00+00:00"
    assert data["observable"] is True
    # Snapped to the samples that bound the window: runs end a second after they start.
    assert data["billed_from"] == "2026-03-01T09:59:00.500000+00:00"
    assert data["billed_until"] == "2026-03-01T10:59:00.500000+00:00"
    assert data["spend_usd"] == pytest.approx(6.6)  # 60 × 0.10 + 60 × 0.01, the gap included
    assert data["outside_fleet_usd"] == pytest.approx(60.0)  # on its own line, never in the quotient
    assert (data["prompt_tokens"], data["completion_tokens"]) == (1900, 600)
    assert data["usd_per_mtok_output"] == pytest.approx(11000.0)  # 6.60 / 600 × 1e6
    assert data["coverage"] == pytest.approx(50 / 60)
    assert data["gaps"] == [{"provider": "sim", "start": "2026-03-01T10:30:00+00:00",
                             "end": "2026-03-01T10:40:00+00:00", "minutes": 10}]
    assert data["complete"] is False and [a["provider"] for a in data["accounts"]] == ["sim"]
    assert data["not_billed_yet"]["completion_tokens"] == 0
    assert data["hosted"]["as_of"] and data["hosted"]["prices"]
    assert "rows" not in data


@pytest.mark.parametrize("by", ["day", "tier", "model", "key", "resource", "type", "utilisation"])
def test_json_breakdowns(spot, seeded: Path, by: str) -> None:
    data = cost_json(spot, *WINDOW, "--by", by)
    assert data["by"] == by and data["rows"]
    rows = data["rows"]
    if by == "key":
        assert {r["key_id"]: r["statement_usd"] for r in rows} == pytest.approx({"key-a": 5.28, "key-b": 1.32})
        assert sum(Decimal(str(r["statement_usd"])) for r in rows) == Decimal("6.6")
    elif by == "resource":  # each resource by name, and whether it still bills
        spends = {(r["resource_type"], r["name"], r["in_fleet"]): r["spend_usd"] for r in rows}
        assert spends == pytest.approx({("vm", "vm-1", True): 6.0, ("volume", "vol-1", True): 0.6,
                                        ("vm", "dev-box", False): 60.0})
        rates = {r["name"]: r["usd_per_hour"] for r in rows}
        assert rates == pytest.approx({"vm-1": 6.0, "vol-1": 0.6, "dev-box": 60.0})
    elif by == "type":
        spends = {(r["resource_type"], r["in_fleet"]): r["spend_usd"] for r in rows}
        assert spends == pytest.approx({("vm", True): 6.0, ("volume", True): 0.6, ("vm", False): 60.0})
    elif by == "tier":
        assert {r["tier"]: r["spend_usd"] for r in rows} == pytest.approx({"t1": 6.6})
    elif by == "model":
        assert {r["model"]: r["spend_usd"] for r in rows} == pytest.approx({"m1": 6.6})
    elif by == "day":
        assert [(r["day"], r["completion_tokens"]) for r in rows] == [("2026-03-01", 600)]
        assert rows[0]["spend_usd"] == pytest.approx(6.6)


def test_csv_and_markdown(spot, seeded: Path) -> None:
    result = spot("cost", *WINDOW, "--csv")
    assert result.returncode == 0, result.stderr
    (row,) = list(csv.DictReader(io.StringIO(result.stdout)))
    assert Decimal(row["spend_usd"]) == Decimal("6.6") and row["observable"] == "True"
    assert Decimal(row["outside_fleet_usd"]) == Decimal("60") and row["complete"] == "False" and row["gaps"] == "1"
    result = spot("cost", *WINDOW, "--by", "key", "--csv")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["key_id"] for r in rows] == ["key-a", "key-b"]
    result = spot("cost", *WINDOW, "--by", "tier", "--markdown")
    assert result.returncode == 0, result.stderr
    page = result.stdout
    assert page.startswith("# Serving economics")
    assert "$11,000.00 / M output tokens" in page and "## By tier" in page
    assert "COVERAGE GAPS" in page and "outside it" in page and "List prices as of" in page
    assert "| outside the fleet (same accounts, not in the figures) | $60.00 |" in page


def test_table_says_gaps_loudly(spot, seeded: Path) -> None:
    result = spot("cost", *WINDOW)
    assert result.returncode == 0, result.stderr
    assert "COVERAGE GAPS" in result.stdout and "$6.60" in result.stdout and "$60.00" in result.stdout
    assert "egress are outside it" in result.stdout.replace("\n", " ")


def test_unobservable_window_is_never_zero(spot, seeded: Path) -> None:
    data = cost_json(spot, "--since", "2026-03-01T10:31", "--until", "2026-03-01T10:39", "--by", "key")
    assert data["observable"] is False and data["spend_usd"] is None and data["usd_per_mtok_output"] is None
    assert data["coverage"] == 0
    table = spot("cost", "--since", "2026-03-01T10:31", "--until", "2026-03-01T10:39")
    assert table.returncode == 0 and "UNOBSERVABLE" in table.stdout
    headline = table.stdout.split("hosted APIs")[0]  # (the hosted price of zero tokens is $0.00)
    assert "$0.00" not in headline and "│ unobservable" in headline
    fresh = cost_json(spot, "--days", "7")  # nothing sampled lately at all
    assert fresh["observable"] is False and fresh["spend_usd"] is None


@pytest.mark.parametrize("args, option", [
    (["--since", "yesterday"], "--since"),
    (["--since", "2026-03-01", "--until", "03/01/2026"], "--until"),
])
def test_bad_dates_exit_2_with_one_line(spot, home: Path, args: list[str], option: str) -> None:
    result = spot("cost", *args)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and option in lines[0] and "YYYY-MM-DD" in lines[0]


def test_terminal_plot(spot, seeded: Path) -> None:
    result = spot("cost", "--since", "2026-03-01", "--until", "2026-03-02", "--plot")
    assert result.returncode == 0, result.stderr
    assert "2026-03-01" in result.stdout and "█" in result.stdout
