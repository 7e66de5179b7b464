"""`spot publish DIR`: the economics site, rendered by a real browser (Debian's headless Chromium)
from `spot publish --serve`, checked against `spot cost --json` for the same window.

The ledger is a real DuckDB file holding what `spot sample` records once a minute for nine days
(a GPU VM at $6/h and its weights volume at $0.60/h), with one whole UTC day without any sampler
run, and requests served through the week.
"""

from __future__ import annotations

import html
import json
import re
import subprocess
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest

from spotinference.reports import query_text
from spotinference.store import Store
from tests.conftest import SPOT
from tests.system_packages import ensure_program

START = datetime(2026, 2, 28, 9, 59, tzinfo=UTC)
STOP = datetime(2026, 3, 9, 10, 1, tzinfo=UTC)
GAP = (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC))  # no sampler run at all
UNTIL = "2026-03-09T10:00"  # the week [03-02 10:00, 03-09 10:00) is whole; the gap is before it
WEEK = ["--since", "2026-03-02T10:00", "--until", UNTIL]
OBSERVED_DAYS = 9  # 02-28 and 03-02 … 03-09 have a good sample; 03-01 and the 81 days before do not


def seed_ledger(home: Path) -> None:
    """What the sampler writes, in three statements: runs, samples, the fleet; and requests."""
    store = Store(home)
    minutes = int((STOP - START).total_seconds() // 60)
    with store.transaction() as con:
        con.execute("""
            CREATE TEMP TABLE minutes AS
            SELECT i, CAST($start AS TIMESTAMPTZ) + i * INTERVAL 1 MINUTE AS t FROM range(0, $n) AS r(i)
            WHERE NOT (CAST($start AS TIMESTAMPTZ) + i * INTERVAL 1 MINUTE >= $gap_start
                       AND CAST($start AS TIMESTAMPTZ) + i * INTERVAL 1 MINUTE < $gap_end)""",
                    {"start": START, "n": minutes, "gap_start": GAP[0], "gap_end": GAP[1]})
        con.execute("""
            INSERT INTO sample_runs (run_id, provider, started_at, finished_at, ok, error, resource_count, seq, sampled_at)
            SELECT 'run-' || i, 'sim', t, t + INTERVAL 1 SECOND, true, NULL, 2, i + 1, t + INTERVAL 500 MILLISECOND
            FROM minutes""")
        con.execute("""
            INSERT INTO billing_samples (run_id, sampled_at, provider, resource_id, resource_type, name, tier,
                                         usd_per_hour, total_bill_usd, active, raw)
            SELECT 'run-' || i, t + INTERVAL 500 MILLISECOND, 'sim', r.id, r.kind, r.id, 't1', r.rate,
                   CAST(i AS DECIMAL(18, 0)) * r.per_minute, true, '{}'
            FROM minutes, (VALUES ('vm-1', 'vm', 6.0, 0.1), ('vol-1', 'volume', 0.6, 0.01)) AS r(id, kind, rate, per_minute)""")
        con.execute("""
            INSERT INTO fleet_resources
            SELECT 'sim', kind, id, id, 't1', $start, 'adopted'
            FROM (VALUES ('vm-1', 'vm'), ('vol-1', 'volume')) AS r(id, kind)""", {"start": START})
        con.executemany(
            "INSERT INTO requests (request_id, gateway_id, key_id, model, tier, node, started_at, finished_at, "
            "prompt_tokens, completion_tokens, http_status) VALUES (?, 'gw', 'key-a', 'm1', 't1', 'node', ?, ?, ?, ?, 200)",
            [(f"req-{n}", at - timedelta(seconds=5), at, prompt, completion) for n, (at, prompt, completion) in enumerate([
                (datetime(2026, 3, 3, 12, tzinfo=UTC), 1_000_000, 4_000_000),
                (datetime(2026, 3, 6, 8, tzinfo=UTC), 500_000, 2_000_000),
                (datetime(2026, 2, 28, 15, tzinfo=UTC), 10, 10),
            ])])


@pytest.fixture
def ledger(home: Path) -> Path:
    seed_ledger(home)
    return home


def usd(value: Decimal) -> str:
    return f"${value.quantize(Decimal('0.01'), rounding=ROUND_HALF_UP):,}"


def cost_json(spot, *args: str) -> dict:
    result = spot("cost", *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout, parse_float=Decimal)


def headline(dom: str) -> tuple[str, str]:
    """(data-status, text) of the page's headline."""
    match = re.search(r'<p id="headline" data-status="([a-z]+)"[^>]*>(.*?)</p>', dom, flags=re.S)
    assert match, dom[:2000]
    return match.group(1), " ".join(html.unescape(match.group(2)).split())


class Served:
    """`spot publish DIR --serve --port 0`: the real command, stopped by the test."""

    def __init__(self, site: Path, *args: str) -> None:
        self.process = subprocess.Popen([str(SPOT), "publish", str(site), "--serve", "--port", "0", *args],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines = [self.process.stdout.readline(), self.process.stdout.readline()]
        match = re.search(r"at (http://127\.0\.0\.1:\d+/) ", self.lines[1])
        assert match, (self.lines, self.process.stderr.read() if self.process.poll() is not None else "")
        self.url = match.group(1)

    def stop(self) -> None:
        self.process.terminate()
        self.process.communicate(timeout=30)


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    program = ensure_program("chromium", "chromium", required=True)
    return subprocess.run([str(program), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--window-size=1000,1600", *args], capture_output=True, text=True, timeout=180)


def test_the_page_in_a_browser_shows_spot_costs_headline_and_a_bar_per_observed_day(
        spot, ledger: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    served = Served(site, "--until", UNTIL)
    screenshot = tmp_path / "index.png"
    try:
        assert served.lines[0].startswith(f"wrote {site}/index.html") and "(this week: complete)" in served.lines[0]
        dom = chromium("--dump-dom", served.url + "index.html")
        assert dom.returncode == 0, dom.stderr[-2000:]
        shot = chromium(f"--screenshot={screenshot}", served.url + "index.html")
        assert shot.returncode == 0 and screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", \
            f"screenshot {screenshot}: {shot.stderr[-1000:]}"
    finally:
        served.stop()
    page = dom.stdout
    week = cost_json(spot, *WEEK)
    assert week["complete"] is True, f"screenshot: {screenshot}"
    rate = Decimal(str(week["usd_per_mtok_output"]))
    assert rate == Decimal("184.8"), f"screenshot: {screenshot}"  # 168 h × $6.60 / 6,000,000 output tokens
    assert headline(page) == ("complete", f"{usd(rate)} per million output tokens"), f"screenshot: {screenshot}"
    assert "<svg" in page and 'class="chart"' in page, f"screenshot: {screenshot}"
    bars = re.findall(r'<rect class="spend-bar" data-day="([0-9-]+)"', page)
    assert len(bars) == OBSERVED_DAYS, f"screenshot: {screenshot}"
    assert "2026-03-01" not in bars and re.search(r'<rect class="gap" data-day="2026-03-01"', page)
    # The same figures as data, exact.
    data = json.loads((site / "data.json").read_text(), parse_float=Decimal)
    assert data["schema_version"] == 1 and data["headline"]["status"] == "complete"
    assert Decimal(data["headline"]["usd_per_mtok_output"]) == rate
    assert Decimal(data["headline"]["spend_usd"]) == Decimal(str(week["spend_usd"]))
    assert (data["headline"]["window_start"], data["headline"]["window_end"]) == (week["window_start"], week["window_end"])
    assert sum(d["status"] == "observed" for d in data["daily"]) == OBSERVED_DAYS
    # The band by tier, with its observed utilisation: spot cost's own rows for the week.
    by_tier = {r["tier"]: r for r in cost_json(spot, *WEEK, "--by", "tier")["rows"]}
    used = {r["tier"]: r for r in cost_json(spot, *WEEK, "--by", "utilisation")["rows"]}
    assert [t["tier"] for t in data["tiers"]] == ["t1"] == list(by_tier)
    [tier] = data["tiers"]
    assert Decimal(tier["spend_usd"]) == Decimal(str(by_tier["t1"]["spend_usd"]))
    assert Decimal(tier["usd_per_mtok_output"]) == Decimal(str(by_tier["t1"]["usd_per_mtok_output"]))
    assert float(tier["paid_gpu_hours"]) == pytest.approx(168.0) == float(used["t1"]["paid_gpu_hours"])
    busy = float(tier["busy_share"])
    assert busy == pytest.approx(float(used["t1"]["busy_share"])) and busy > 0
    assert f"{busy * 100:.2f}%" in page
    assert [d["spend_usd"] for d in data["daily"] if d["status"] != "observed"] == [None] * (len(data["daily"]) - OBSERVED_DAYS)


def test_an_incomplete_week_says_so_in_words(spot, ledger: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = spot("publish", str(site), "--until", "2026-03-05T10:00")  # the week holds the gap day
    assert result.returncode == 0, result.stderr
    assert "(this week: incomplete)" in result.stdout
    status, text = headline((site / "index.html").read_text())
    assert status == "incomplete" and "incomplete" in text and "$" not in text
    assert "gap(s) without a billing sample" in (site / "index.html").read_text()
    data = json.loads((site / "data.json").read_text())
    assert data["headline"]["status"] == "incomplete" and data["headline"]["complete"] is False


def test_an_unobservable_week_says_so_and_shows_no_number(spot, ledger: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = spot("publish", str(site), "--until", "2026-02-20")
    assert result.returncode == 0, result.stderr
    status, text = headline((site / "index.html").read_text())
    assert status == "unobservable" and "unknown" in text and "$" not in text
    data = json.loads((site / "data.json").read_text())
    assert data["headline"]["usd_per_mtok_output"] is None and data["headline"]["spend_usd"] is None
    assert {d["status"] for d in data["daily"]} == {"unobserved"}
    assert 'class="spend-bar"' not in (site / "index.html").read_text()


def test_method_page_has_each_query_verbatim(spot, ledger: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    assert spot("publish", str(site), "--until", UNTIL).returncode == 0
    method = (site / "method.html").read_text()
    shown = {name: html.unescape(sql) for name, sql in
             re.findall(r'<pre class="sql" data-query="([a-z_]+)">(.*?)</pre>', method, flags=re.S)}
    data = json.loads((site / "data.json").read_text())
    assert set(shown) == set(data["queries"]) >= {"cost_per_mtok", "spend_by_day", "spend_by_tier", "coverage"}
    for name, sql in shown.items():
        assert sql == query_text(name)


def test_a_file_in_the_way_is_one_line_exit_2(spot, home: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "site"
    blocker.write_text("not a directory")
    result = spot("publish", str(blocker))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "expected a directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_cron_prints_a_daily_publish_line_that_runs(spot, home: Path) -> None:
    data = json.loads(spot("cron", "--json").stdout)
    line = data["publish"]["crontab"]
    assert line.startswith("10 0 * * * ") and f"publish {home}/site" in line
    assert "OnCalendar=*-*-* 00:10:00 UTC" in data["publish"]["systemd"]["spot-publish.timer"]
    assert f"ExecStart={SPOT} publish {home}/site" in data["publish"]["systemd"]["spot-publish.service"]
    text = spot("cron").stdout
    assert line in text.splitlines()
    ran = subprocess.run(["sh", "-c", line.removeprefix("10 0 * * * ")], env={"PATH": "/usr/bin:/bin"}, cwd="/",
                         timeout=120)
    assert ran.returncode == 0, (home / "publish.log").read_text()
    assert (home / "site" / "index.html").exists() and (home / "site" / "data.json").exists()


def test_serve_on_a_taken_port_is_one_line_exit_10(spot, home: Path, tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = spot("publish", str(tmp_path / "site"), "--serve", "--port", str(port))
    assert result.returncode == 10
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr and "Traceback" not in result.stderr


def test_a_bad_until_is_one_line_exit_2(spot, home: Path, tmp_path: Path) -> None:
    result = spot("publish", str(tmp_path / "site"), "--until", "last tuesday")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[0].startswith("error: --until 'last tuesday' is not a date or time")
    assert "Traceback" not in result.stderr and not (tmp_path / "site").exists()
