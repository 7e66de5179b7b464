"""Invoice-true money end to end: `spot sample` + the gateway's token log + `spot cost` against
`spot sim cloud`, checked against the emulator's own bill (issue 6, "Done when").

The clock. The emulator runs at a thousandth of real time (``--time-scale 0.001``) with zero
lifecycle delays, so its clock stands still (a 100 s test moves it 0.1 emulated s) and only moves
when a test POSTs ``/_sim/advance``. Every billing minute is therefore one the test caused, and the
emulator's bill at each sample is known exactly: the test advances, then samples, and nothing
moves in between. (``--time-scale 60`` would make a billing minute pass every real second, so a
sample and a ``/_sim/state`` read could see different minutes: racy, not to-the-cent.) Advances are
whole multiples of 3 minutes, so every bill is an exact micro-dollar amount (sim-cpu-1 bills
$0.50/h = $0.025 per 3 min; the 60 GB weights volume $0.006/h = $0.0003 per 3 min; a hibernated
VM $0.012/h = $0.0006 per 3 min): the emulator's bills (10 decimals) and spot's columns
(DECIMAL(18, 6)) hold the same numbers, so "to the cent" is checked as exact equality.

Sample times are ours (real UTC); the gateway's rows are real UTC too. Nothing asserts on
wall-clock durations.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest

from spotinference.sim.cloud import catalog
from spotinference.store import Store
from tests.fleet_config import sim_tier, write_fleet_config
from tests.conftest import SPOT, run_spot
from tests.servers import start_sim_cloud
from tests.test_fleet import Cloud, ok
from tests.test_scale_to_zero import Gateway, start_gateway, wait_for

pytestmark = pytest.mark.slow  # each test runs the emulator, a fleet node and several CLI processes

MODEL = "tiny-chat"
FROZEN_CLOCK = ["--time-scale", "0.001", "--create-seconds", "0", "--hibernate-seconds", "0",
                "--restore-seconds", "0", "--delete-seconds", "0"]
STEP_S = 180  # each advance: 3 billing minutes, so every bill below is an exact micro-dollar amount
VOLUME_GB = 60
US = timedelta(microseconds=1)
US_MICRO = Decimal("0.000001")  # DECIMAL(38, 6): the precision of every money figure

VM_RATE = catalog.FLAVORS["sim-cpu-1"].usd_per_hour  # $/h while ACTIVE
VOLUME_RATE = VOLUME_GB * catalog.VOLUME_USD_PER_GB_HOUR  # $/h while it exists
HIBERNATED_RATE = catalog.HIBERNATED_USD_PER_HOUR  # $/h while HIBERNATED


def accrual(usd_per_hour: Decimal, minutes: int) -> Decimal:
    return usd_per_hour * minutes / 60


def write_config(base_url: str) -> None:
    demo = sim_tier(capacity="on-demand", model=MODEL, weights_volume="demo-weights", weights_volume_gb=VOLUME_GB,
                    idle_timeout_s=3600, sim={"load_seconds": 0.5, "ttft_ms": 20, "itl_ms": 5})
    write_fleet_config(base_url, {"demo": demo}, gateway={"keepalive_s": 1, "health_interval_s": 0.5, "provider_refresh_s": 1})


class Emulator(Cloud):
    def advance(self, seconds: float) -> None:
        httpx.post(f"{self.root}/_sim/advance", json={"seconds": seconds}, timeout=10).raise_for_status()

    def bills(self) -> dict[tuple[str, int], Decimal]:
        """Each resource's cumulative bill, (type, id) -> USD, as the emulator itself computes it."""
        state = self.state()
        bills = {("vm", vm["id"]): Decimal(vm["bill"]["total_usd"]) for vm in state["vms"]}
        bills |= {("volume", vol["id"]): Decimal(vol["bill"]["total_usd"]) for vol in state["volumes"]}
        assert sum(bills.values(), Decimal(0)) == Decimal(state["spent_usd"])
        return bills

    def total(self) -> Decimal:
        """The emulator's whole bill: the sum over all resources (live and deleted) of their bills."""
        return sum(self.bills().values(), Decimal(0))


@pytest.fixture
def cloud(tmp_path: Path):
    server, root = start_sim_cloud(tmp_path / "cloud", *FROZEN_CLOCK)
    emulator = Emulator(f"{root}/v1", server)
    write_config(emulator.base_url)
    yield emulator
    run_spot("down", "demo", "--terminate", "--yes")
    server.stop()


# -- sampling and reporting through the CLI ------------------------------------------------------

@dataclass(frozen=True)
class Sample:
    """One `spot sample --json` run."""

    data: dict

    @property
    def sampled_at(self) -> datetime:
        return datetime.fromisoformat(self.data["sampled_at"])

    @property
    def started_at(self) -> datetime:
        return datetime.fromisoformat(self.data["runs"][0]["started_at"])

    @property
    def since_last(self) -> Decimal | None:
        value = self.data["spend_usd_since_last"]
        return None if value is None else Decimal(str(value))


def parse_sample(stdout: str) -> Sample:
    data = json.loads(stdout)
    assert data["ok"] is True and data["skipped"] is False and data["error"] is None, data
    return Sample(data)


def sample() -> Sample:
    result = run_spot("sample", "--json")
    assert result.returncode == 0, result.stderr
    return parse_sample(result.stdout)


def cost(since: datetime, until: datetime, *extra: str) -> dict:
    result = run_spot("cost", "--json", "--since", since.isoformat(), "--until", until.isoformat(), *extra)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def usd(value: object) -> Decimal | None:
    """A money figure of `spot cost --json` (a JSON number, exact to 1e-6) as a Decimal."""
    return None if value is None else Decimal(str(value))


def minute(t: datetime) -> int:
    return int(t.timestamp()) // 60


def expected_coverage(since: datetime, until: datetime, run_starts: list[datetime]) -> tuple[int, int]:
    """(covered, window) minutes as coverage.sql defines them: a UTC minute the window touches is
    covered when an ok run STARTED in it, inside the window."""
    covered = {minute(t) for t in run_starts if since <= t < until}
    return len(covered), minute(until - US) - minute(since) + 1


# -- traffic through the gateway (the official SDK) ----------------------------------------------

@dataclass(frozen=True)
class Served:
    prompt_tokens: int
    completion_tokens: int
    streamed: bool


async def one_request(client: openai.AsyncOpenAI, i: int) -> Served:
    messages = [{"role": "user", "content": f"request {i}: " + "tell me more " * (i % 5)}]
    max_tokens = 8 + 4 * (i % 7)
    if i % 2:
        stream = await client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=max_tokens, stream=True,
            stream_options={"include_usage": True})
        usage, text = None, ""
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage:
                usage = chunk.usage
        assert usage is not None and text
        return Served(usage.prompt_tokens, usage.completion_tokens, True)
    reply = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens)
    assert reply.choices[0].message.content
    return Served(reply.usage.prompt_tokens, reply.usage.completion_tokens, False)


async def burst(gateway: Gateway, first: int, n: int) -> list[Served]:
    async with gateway.client() as client:
        return list(await asyncio.gather(*(one_request(client, first + i) for i in range(n))))


async def traffic_while_sampling(gateway: Gateway, first: int) -> tuple[list[Served], Sample]:
    """`spot sample --json` in a process of its own while requests keep streaming through the
    gateway (pairs of requests, one streamed, one not, until the sample is recorded)."""
    proc = await asyncio.create_subprocess_exec(str(SPOT), "sample", "--json", stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    done = asyncio.ensure_future(proc.communicate())
    served: list[Served] = []
    async with gateway.client() as client:
        while not done.done() or len(served) < 4:
            served += await asyncio.gather(one_request(client, first + len(served)),
                                           one_request(client, first + len(served) + 1))
    out, err = await done
    assert proc.returncode == 0, err.decode()
    return served, parse_sample(out.decode())


def token_log(home: Path, count: int) -> list[tuple[datetime, int, int, bool, int]]:
    """The gateway's token log (finished_at, prompt, completion, streamed, status) once it holds
    ``count`` rows (the gateway's flusher copies its spool into the database every second)."""
    found: list = []

    def complete() -> bool:
        nonlocal found
        run_spot("db", "flush")
        with Store(home).reading() as con:
            found = con.execute("SELECT finished_at, prompt_tokens, completion_tokens, streamed, http_status "
                                "FROM requests ORDER BY finished_at").fetchall()
        return len(found) >= count

    wait_for(complete, 30, f"{count} rows in the token log")
    assert len(found) == count
    return found


def runs(home: Path) -> list[tuple[str, bool, datetime, datetime]]:
    """Every sampler run: (run_id, ok, started_at, sampled_at of its rows), oldest first."""
    with Store(home).reading() as con:
        return con.execute("""
            SELECT r.run_id, r.ok, r.started_at, (SELECT max(sampled_at) FROM billing_samples AS b WHERE b.run_id = r.run_id)
            FROM sample_runs AS r ORDER BY r.started_at""").fetchall()


# -- 1. the headline: spend = the emulator's bill delta while traffic flows ----------------------

def test_spot_cost_spend_equals_the_emulators_bill_delta_while_traffic_flows(cloud: Emulator, tmp_path: Path,
                                                                            home: Path) -> None:
    ok("up", "demo")
    sample()  # the gateway refuses to serve blind: a fresh sample opens its gate
    gateway = start_gateway(tmp_path, home)
    try:
        wait_for(lambda: httpx.get(f"{gateway.url}/health", timeout=5).json() == {"status": "ok"}, 30, "the gate to open")
        before = asyncio.run(burst(gateway, 0, 6))  # served before the window: not in it
        cloud.advance(STEP_S)
        sample()  # the sample before the baseline
        e_previous = cloud.total()
        cloud.advance(STEP_S)
        baseline = sample()  # the window starts just after this sample
        e_baseline = cloud.total()
        assert baseline.since_last == e_baseline - e_previous

        # Sample every second or so while traffic flows, moving the bill 3 minutes between samples.
        served: list[Served] = []
        samples = [baseline]
        totals = [e_baseline]
        for _ in range(4):
            cloud.advance(STEP_S)
            totals.append(cloud.total())
            more, taken = asyncio.run(traffic_while_sampling(gateway, 100 + len(served)))
            served += more
            samples.append(taken)
        cloud.advance(STEP_S)
        last = sample()  # the window ends just after this sample
        e_last = cloud.total()
        samples.append(last)
        totals.append(e_last)

        after = asyncio.run(burst(gateway, 1000, 6))  # served after the window: not in it
        log = token_log(home, len(before) + len(served) + len(after))
    finally:
        gateway.server.stop()

    # Each sample reports the emulator's bill delta since the previous one, to the micro-dollar.
    for taken, total, prior in zip(samples[1:], totals[1:], totals[:-1], strict=True):
        assert taken.since_last == total - prior
        assert taken.data["resources"] == 2  # the VM and the weights volume (both id 1 at the emulator)

    # The window. Spend is the sum of the increases whose LATER sample falls in [since, until)
    # (billing_increases, migration 0006). The baseline sample's own increase (from `previous`)
    # is attributed to the baseline's sampled_at, so the window must start just AFTER it
    # (sampled_at + 1 µs) for the baseline to be the window's zero; it ends just after the last
    # sample (sampled_at + 1 µs, the end is exclusive). Then spend telescopes to
    # Σ (E_i - E_i-1) for the samples after the baseline = E_last - E_baseline.
    since, until = baseline.sampled_at + US, last.sampled_at + US
    report = cost(since, until)
    delta = e_last - e_baseline
    steps = len(samples) - 1
    assert delta == accrual(VM_RATE + VOLUME_RATE, 3 * steps)  # by hand: 15 minutes of VM and volume
    assert datetime.fromisoformat(report["window_start"]) == since
    assert datetime.fromisoformat(report["window_end"]) == until
    assert report["observable"] is True
    assert usd(report["spend_usd"]) == delta  # exact: both are whole micro-dollars (see the docstring)
    assert round(usd(report["spend_usd"]), 2) == round(delta, 2)  # the "Done when": to the cent
    print(f"\nwindow {since.isoformat()} -> {until.isoformat()}: emulator bill {e_baseline} -> {e_last} "
          f"(delta {delta}); spot cost spend_usd {report['spend_usd']}, {report['completion_tokens']} completion "
          f"tokens, {report['usd_per_mtok_output']} $/M output, coverage {report['coverage']}")

    # Tokens: the requests that finished in the window = everything sent between the two samples,
    # as the token log has them and as the SDK saw them in `usage`.
    in_window = [row for row in log if since <= row[0] < until]
    assert len(in_window) == len(served) and all(row[4] == 200 for row in log)
    assert sum(row[3] for row in in_window) == sum(s.streamed for s in served) > 0  # streamed and not
    completion = sum(s.completion_tokens for s in served)
    prompt = sum(s.prompt_tokens for s in served)
    assert report["completion_tokens"] == sum(row[2] for row in in_window) == completion > 0
    assert report["prompt_tokens"] == sum(row[1] for row in in_window) == prompt > 0
    assert completion < sum(row[2] for row in log)  # the bursts before and after were left out

    # Cost per million output tokens = spend / completion tokens × 1e6 (DECIMAL(38, 6)).
    per_mtok = usd(report["usd_per_mtok_output"])
    assert abs(per_mtok - delta * 1_000_000 / completion) <= Decimal("0.000001")
    per_mtok_total = usd(report["usd_per_mtok_total"])
    assert abs(per_mtok_total - delta * 1_000_000 / (completion + prompt)) <= Decimal("0.000001")

    # Coverage: the minutes the window touches in which a sample run started (about one a second here).
    covered, window_minutes = expected_coverage(since, until, [s.started_at for s in samples])
    assert (report["covered_minutes"], report["window_minutes"]) == (covered, window_minutes)
    assert report["coverage"] == pytest.approx(covered / window_minutes)
    assert (report["gaps"] == []) == (covered == window_minutes)

    # The boundary, the other way: a window starting AT the baseline's time counts its increase.
    inclusive = cost(baseline.sampled_at, until)
    assert usd(inclusive["spend_usd"]) == e_last - e_previous

    # The two things the band covers: the GPU VM and the weights volume (VM 1 and volume 1).
    by_resource = {r["resource_type"]: r for r in cost(since, until, "--by", "type")["rows"]}
    assert set(by_resource) == {"vm", "volume"}
    assert usd(by_resource["vm"]["spend_usd"]) == accrual(VM_RATE, 3 * steps)
    assert usd(by_resource["volume"]["spend_usd"]) == accrual(VOLUME_RATE, 3 * steps)
    assert by_resource["vm"]["resources"] == by_resource["volume"]["resources"] == 1
    # --by resource names the same two, each with its own bill and the rate it bills at now.
    named = {r["resource_type"]: r for r in cost(since, until, "--by", "resource")["rows"]}
    assert set(named) == {"vm", "volume"} and all(r["name"] and r["in_fleet"] for r in named.values())
    assert {k: usd(r["spend_usd"]) for k, r in named.items()} == {k: usd(r["spend_usd"]) for k, r in by_resource.items()}

    # The pass-through statement: one key carried every token, so it owes the whole spend.
    [statement] = cost(since, until, "--by", "key")["rows"]
    assert statement["key_name"] == "test" and statement["requests"] == len(served)
    assert usd(statement["statement_usd"]) == delta


# -- 2. the sampler stops: a gap is coverage, never $0 --------------------------------------------

def start_loop() -> subprocess.Popen[str]:
    return subprocess.Popen([str(SPOT), "sample", "--every", "1", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def next_sample(loop: subprocess.Popen[str]) -> Sample:
    line = loop.stdout.readline()  # one JSON object per run
    assert line, f"the sampler loop died: {loop.stderr.read() if loop.poll() is not None else ''}"
    return parse_sample(line)


def stop_loop(loop: subprocess.Popen[str]) -> None:
    loop.send_signal(signal.SIGINT)  # Ctrl-C: what stopping a `--every` loop looks like
    _, err = loop.communicate(timeout=30)
    assert loop.returncode == 0 and "Traceback" not in err, err


def test_a_stopped_sampler_leaves_a_gap_in_coverage_and_its_spend_lands_on_the_next_sample(
    cloud: Emulator, home: Path
) -> None:
    ok("up", "demo")
    cloud.advance(STEP_S)
    e_before = cloud.total()  # what every sample before the gap sees (the clock stands still)

    loop = start_loop()
    try:
        for _ in range(2):
            next_sample(loop)
    finally:
        stop_loop(loop)
    *_, (last_id, last_ok, last_started, last_sampled) = runs(home)  # the last run before the gap
    assert last_ok is True

    # The gap: billing keeps accruing (6 minutes) while nothing samples, for at least one whole
    # UTC minute (the one after the last run's): that minute has no sample at all.
    cloud.advance(2 * STEP_S)
    e_gap = cloud.total()
    assert e_gap - e_before == accrual(VM_RATE + VOLUME_RATE, 6)
    gap_minute = minute(last_started) + 1
    time.sleep(max(0.0, (gap_minute + 1) * 60 + 0.2 - time.time()))

    loop = start_loop()
    try:
        first_after = next_sample(loop)  # the first sample after the gap
        assert minute(first_after.started_at) > gap_minute
        assert first_after.since_last == e_gap - e_before  # the whole gap's spend, on this sample
        cloud.advance(STEP_S)
        moved = datetime.now(UTC)  # after the advance returned: a run started later reads e_end
        e_end = cloud.total()
        while next_sample(loop).started_at <= moved:  # wait for one such run
            pass
    finally:
        stop_loop(loop)
    *_, (end_id, end_ok, end_started, end_sampled) = runs(home)
    assert end_ok is True and end_started > moved
    ok_starts = [started for _, good, started, _ in runs(home) if good]

    # The whole window, from just after the last sample before the gap to just after the last one.
    since, until = last_sampled + US, end_sampled + US
    report = cost(since, until)
    assert report["observable"] is True
    assert usd(report["spend_usd"]) == e_end - e_before  # nothing lost: the gap's bill is in it
    print(f"\ngap window: emulator delta {e_end - e_before}, spot cost {report['spend_usd']}, "
          f"coverage {report['coverage']}, gaps {report['gaps']}")
    covered, window_minutes = expected_coverage(since, until, ok_starts)
    assert (report["covered_minutes"], report["window_minutes"]) == (covered, window_minutes)
    assert report["coverage"] == pytest.approx(covered / window_minutes)
    assert 0 < report["coverage"] < 1
    # One gap, listed: from the window's start (no run between the last sample and the first after
    # the gap) to the minute in which sampling resumed.
    [gap] = report["gaps"]
    assert datetime.fromisoformat(gap["start"]) == since
    assert datetime.fromisoformat(gap["end"]) == datetime.fromtimestamp(minute(first_after.started_at) * 60, UTC)
    assert gap["minutes"] == minute(first_after.started_at) - minute(since) >= 1

    # The gap's spend lands on the first sample after it, and only there.
    to_first = cost(since, first_after.sampled_at + US)
    assert usd(to_first["spend_usd"]) == e_gap - e_before
    from_first = cost(first_after.sampled_at + US, until)
    assert usd(from_first["spend_usd"]) == e_end - e_gap

    # A window inside the gap is unobservable: its spend is unknown, never $0.
    gap_start = datetime.fromtimestamp(gap_minute * 60, UTC)
    blind = cost(gap_start, gap_start + timedelta(minutes=1))
    assert blind["observable"] is False and blind["spend_usd"] is None and blind["usd_per_mtok_output"] is None
    assert blind["coverage"] == 0 and [g["minutes"] for g in blind["gaps"]] == [1]
    table = run_spot("cost", "--since", gap_start.isoformat(), "--until", (gap_start + timedelta(minutes=1)).isoformat())
    assert table.returncode == 0, table.stderr
    assert "UNOBSERVABLE" in table.stdout
    assert re.search(r"│ spend \(fleet\) +│ unobservable +│", table.stdout), table.stdout  # not "$0.00"
    loud = run_spot("cost", "--since", since.isoformat(), "--until", until.isoformat())
    assert loud.returncode == 0 and "COVERAGE GAPS" in loud.stdout


# -- 3. an idle fleet with healthy billing ---------------------------------------------------------

def test_an_idle_hibernated_fleet_costs_its_storage_and_has_no_cost_per_token(cloud: Emulator, home: Path) -> None:
    ok("up", "demo")
    ok("hibernate", "demo")
    [vm] = cloud.vms()
    assert vm["status"] == "HIBERNATED"

    baseline = sample()
    e_baseline = cloud.total()
    samples = [baseline]
    for _ in range(3):
        cloud.advance(STEP_S)
        taken = sample()  # the samples continue while the fleet sleeps
        assert taken.data["resources"] == 2
        assert taken.since_last == accrual(HIBERNATED_RATE + VOLUME_RATE, 3) > 0  # storage, not $0
        samples.append(taken)
    e_last = cloud.total()
    assert cloud.vms()[0]["status"] == "HIBERNATED"

    since, until = baseline.sampled_at + US, samples[-1].sampled_at + US  # as in test 1
    report = cost(since, until)
    assert report["observable"] is True
    assert usd(report["spend_usd"]) == e_last - e_baseline == accrual(HIBERNATED_RATE + VOLUME_RATE, 9)
    assert report["spend_usd"] > 0
    print(f"\nidle window: emulator delta {e_last - e_baseline}, spot cost {report['spend_usd']}, "
          f"usd_per_mtok_output {report['usd_per_mtok_output']}")
    assert report["prompt_tokens"] == report["completion_tokens"] == 0
    assert report["usd_per_mtok_output"] is None and report["usd_per_mtok_total"] is None  # undefined, not $0
    covered, window_minutes = expected_coverage(since, until, [s.started_at for s in samples])
    assert (report["covered_minutes"], report["window_minutes"]) == (covered, window_minutes)

    table = run_spot("cost", "--since", since.isoformat(), "--until", until.isoformat())
    assert table.returncode == 0, table.stderr
    assert "undefined (no output tokens)" in table.stdout


# -- 4. the quotient covers one interval: sample, traffic, sample, `spot cost --days 1` -----------

def test_a_trailing_window_divides_the_spend_between_two_samples_by_the_tokens_between_them(
    cloud: Emulator, tmp_path: Path, home: Path
) -> None:
    ok("up", "demo")
    first = sample()
    e_first = cloud.total()
    gateway = start_gateway(tmp_path, home)
    try:
        wait_for(lambda: httpx.get(f"{gateway.url}/health", timeout=5).json() == {"status": "ok"}, 30, "the gate to open")
        served = asyncio.run(burst(gateway, 0, 8))
        token_log(home, len(served))
        cloud.advance(STEP_S)
        last = sample()  # the bill that pays for the traffic
        e_last = cloud.total()
    finally:
        gateway.server.stop()

    report = json.loads(run_spot("cost", "--days", "1", "--json").stdout)
    completion = sum(s.completion_tokens for s in served)
    assert report["observable"] is True
    assert datetime.fromisoformat(report["billed_until"]) == last.sampled_at
    # The first sample is the account's first good run: the bill so far is its baseline, not spend.
    assert usd(report["spend_usd"]) == e_last - e_first > 0
    assert report["completion_tokens"] == completion > 0
    # spend ÷ tokens × 1e6, as DECIMAL(38, 6) holds it
    assert abs(usd(report["usd_per_mtok_output"]) - usd(report["spend_usd"]) * 1_000_000 / completion) <= US_MICRO
    assert report["not_billed_yet"] is None or report["not_billed_yet"]["completion_tokens"] == 0
    assert first.sampled_at < datetime.fromisoformat(report["billed_until"])
