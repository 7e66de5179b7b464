"""`spot events` and `spot serve`'s log: the fleet's decisions as they happen and afterwards.

Real decisions, driven as in test_scale_to_zero.py and test_budget_gate.py: a gateway in front
of a fleet on `spot sim cloud` wakes a hibernated tier for a request and hibernates it when idle;
stale billing closes the budget gate (with two gateway workers, recorded once); a sampler that
cannot reach its provider records a failed run. Then `spot events` (table and --json, --tier and
--since) and the gateway's stderr (--log-format json) must tell the same story.
"""

from __future__ import annotations

import functools
import json
import queue
import signal
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from spotinference.billing.sampler import sample as sample_billing
from spotinference.config import load_settings
from spotinference.store import Store
from tests.conftest import SPOT, run_spot
from tests.fleet_config import sim_tier, write_fleet_config
from tests.servers import ServerProcess, clean_env, free_port
from tests.test_budget_gate import Sampler, with_budget
from tests.test_fleet import ok
from tests.test_scale_to_zero import MODEL, Gateway, fleet, vm_status, wait_for, write_config  # noqa: F401 - fixture

EMPTY_HINT = "no events yet: they appear when a tier wakes, hibernates or fails over, or the budget gate changes"


def start_gateway(workdir: Path, home: Path, *flags: str) -> Gateway:
    key = json.loads(ok("keys", "create", "test", "--json").stdout)["key"]
    port = free_port()
    server = ServerProcess(
        [str(SPOT), "serve", "--port", str(port), *flags],
        env=clean_env(home), log_path=workdir / "gateway.log", health_url=f"http://127.0.0.1:{port}/health",
    ).start()
    return Gateway(server, f"http://127.0.0.1:{port}", key, home)


def json_lines(path: Path) -> list[dict]:
    """The gateway's log lines that are JSON objects (each must parse: a torn line fails here)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def events_json(*args: str) -> list[dict]:
    return json.loads(ok("events", "--json", *args).stdout)


def test_a_wake_and_an_idle_hibernation_show_in_spot_events_and_in_the_gateways_log(
        fleet, tmp_path: Path, home: Path) -> None:  # noqa: ANN001, F811
    write_config(fleet.base_url, idle_timeout_s=3, fallback=False)
    ok("up", "demo")
    ok("hibernate", "demo")
    gateway = start_gateway(tmp_path, home, "--log-format", "json")
    try:
        import openai

        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.key, max_retries=0, timeout=120)
        stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=8,
                                                stream=True, stream_options={"include_usage": True})
        usage = [chunk.usage for chunk in stream if chunk.usage][-1]
        assert usage.completion_tokens > 0
        wait_for(lambda: vm_status(fleet, "spot-demo-1") == "HIBERNATED", 60, "the idle tier to hibernate")
        wait_for(lambda: any(e["kind"] == "hibernated" for e in events_json()), 30, "the hibernation's event")
        log_path = tmp_path / "gateway.log"
        wait_for(lambda: any(line.get("event") == "hibernated" for line in json_lines(log_path)), 30,
                 "the hibernation's log line")
    finally:
        gateway.server.stop()

    # The gateway's stderr: the decisions as they happened, and the request's access line.
    lines = json_lines(log_path)
    by_event = {line.get("event"): line for line in lines}
    assert by_event["wake_started"]["tier"] == "demo" and "request for tiny-chat held" in by_event["wake_started"]["why"]
    assert by_event["wake_finished"]["wake_s"] > 0
    assert by_event["hibernate_started"]["tier"] == "demo" and "idle" in by_event["hibernate_started"]["why"]
    assert by_event["hibernated"]["tier"] == "demo"
    [access] = [line for line in lines if line.get("event") == "request"]
    assert access["key"] == "test" and access["model"] == MODEL and access["tier"] == "demo"
    assert access["status"] == 200 and access["completion_tokens"] == usage.completion_tokens
    assert access["prompt_tokens"] == usage.prompt_tokens
    assert access["ttft_ms"] > 0 and access["wake_wait_ms"] > 0 and access["duration_ms"] >= access["wake_wait_ms"]
    assert gateway.key not in log_path.read_text()  # the key's name, never the key

    # `spot events --json`: who triggered the wake, how long it took, why the tier hibernated.
    events = events_json()
    kinds = [e["kind"] for e in events]
    assert {"decision", "waking", "serving", "woke", "hibernating", "hibernated"} <= set(kinds)
    after_wake = events[kinds.index("woke"):]
    woke = after_wake[0]
    assert woke["tier"] == "demo" and woke["detail"]["wake_s"] > 0 and "request for tiny-chat held" in woke["message"]
    hibernating = next(e for e in after_wake if e["kind"] == "hibernating")  # not `spot hibernate`'s, before
    assert hibernating["node"] == "spot-demo-1" and "idle" in hibernating["message"]
    # Fleet-wide events are in the list too: the gate turned off by this config.
    assert any(e["source"] == "gate" and e["tier"] is None and "gate turned off" in e["message"] for e in events)

    # The table: one row per event, the reasons in words.
    table = run_spot("events", env={"COLUMNS": "300"})
    assert table.returncode == 0
    assert "woke in" in table.stdout and "hibernated" in table.stdout and "idle" in table.stdout

    # --tier: only that tier's events (the gate's are fleet-wide).
    demo = events_json("--tier", "demo")
    assert demo and all(e["tier"] == "demo" for e in demo) and len(demo) == len(events) - 1
    unknown = run_spot("events", "--tier", "nosuch")
    assert unknown.returncode == 2 and "nosuch" in unknown.stderr and "demo" in unknown.stderr
    # --since: from the hibernation on, the wake is left out; a duration counts back from now.
    since = events_json("--since", hibernating["event_at"])
    assert {e["kind"] for e in since} >= {"hibernating", "hibernated"} and "woke" not in {e["kind"] for e in since}
    assert len(events_json("--since", "30m")) == len(events)
    assert len(events_json("--limit", "2")) == 2
    future = run_spot("events", "--since", "2099-01-01")
    assert future.returncode == 0 and future.stdout == "" and EMPTY_HINT in future.stderr
    bad = run_spot("events", "--since", "yesterday")
    assert bad.returncode == 2 and "--since 'yesterday'" in bad.stderr and len(bad.stderr.splitlines()) == 1


@pytest.fixture
def cloud(tmp_path: Path):
    from tests.servers import start_sim_cloud
    from tests.test_fleet import Cloud

    server, root = start_sim_cloud(tmp_path / "cloud", "--create-seconds", "1", "--hibernate-seconds", "1",
                                   "--restore-seconds", "2", "--delete-seconds", "0.5")
    yield Cloud(f"{root}/v1", server)
    ok("down", "demo", "--terminate", "--yes")
    server.stop()


def good_runs(home: Path) -> int:
    if not (home / "spot.duckdb").exists():
        return 0
    with Store(home).reading() as con:
        return con.execute("SELECT count(*) FROM sample_runs WHERE ok").fetchone()[0]


def gate_events(since: datetime | None = None) -> list[dict]:
    return [e for e in events_json() if e["source"] == "gate"
            and (since is None or datetime.fromisoformat(e["event_at"]) >= since)]


def test_the_gate_closing_on_stale_billing_is_one_event_across_two_workers(cloud, tmp_path: Path, home: Path) -> None:  # noqa: ANN001
    write_config(cloud.base_url, fallback=False, gate=True)
    with_budget(None, max_sample_age_s=5)
    ok("up", "demo")
    sampler = Sampler(tmp_path)
    wait_for(lambda: good_runs(home) > 0, 60, "a first good sample")
    gateway = start_gateway(tmp_path, home, "--workers", "2", "--log-format", "json")
    log_path = tmp_path / "gateway.log"
    try:
        wait_for(lambda: any(e["kind"] == "gate_opened" for e in gate_events()), 30, "the gate to open")
        sampler.stop()  # billing is now unobservable
        stopped = datetime.now(UTC)

        def closed_lines() -> list[dict]:
            return [line for line in json_lines(log_path) if line.get("event") == "gate_closed"]

        # Each worker has its own gate and logs its own line; the store gets one event.
        wait_for(lambda: len(closed_lines()) >= 2, 60, "both workers' gates to close")
        closed = [e for e in gate_events(stopped) if e["kind"] == "gate_closed"]
        assert len(closed) == 1, closed
        assert "billing unobservable" in closed[0]["message"] and closed[0]["detail"]["reason"] == "billing_unobservable"
        assert all(line["why"] == "billing unobservable" for line in closed_lines())

        # A sample dated in the future is a clock fault: a change of reason, one more event.
        settings, _ = load_settings(None)
        assert sample_billing(settings, Store(settings.home), clock=lambda: datetime.now(UTC) + timedelta(minutes=10)).ok
        wait_for(lambda: any("clock fault" in e["message"] for e in gate_events(stopped)), 30, "the clock fault's event")
        wait_for(lambda: sum(line["why"] == "clock fault" for line in closed_lines()) >= 2, 30, "both workers' clock fault")
        faults = [e for e in gate_events(stopped) if "clock fault" in e["message"]]
        assert len(faults) == 1 and faults[0]["kind"] == "gate_closed" and faults[0]["detail"]["clock_fault"] is True
    finally:
        sampler.stop()
        gateway.server.stop()
    # The next run, on a correct clock, reads ten minutes behind the future-dated one: an event too.
    assert sample_billing(settings, Store(settings.home)).ok
    [behind] = [e for e in events_json() if e["kind"] == "sampler_clock_behind"]
    assert behind["detail"]["clock_behind_s"] > 500 and "behind its previous run's" in behind["message"]
    table = run_spot("events", env={"COLUMNS": "300"})
    assert table.returncode == 0 and "budget gate closed: billing unobservable" in table.stdout
    assert "budget gate closed: clock fault" in table.stdout


def lines_of(stream) -> queue.Queue[str]:  # noqa: ANN001
    """A child's pipe, line by line, read in a thread so that a test can wait with a deadline."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in stream], daemon=True).start()
    return lines


def read_line(lines: queue.Queue[str], timeout_s: float) -> str:
    try:
        return lines.get(timeout=timeout_s)
    except queue.Empty:
        raise AssertionError(f"no line within {timeout_s} s") from None


@pytest.fixture
def not_a_provider(tmp_path: Path):
    """An HTTP server that answers 404 to everything: billing that cannot be read."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_a_failed_sampler_run_is_an_event(home: Path, not_a_provider: str) -> None:
    write_fleet_config(not_a_provider, {"demo": sim_tier()})
    empty = run_spot("events")
    assert empty.returncode == 0 and empty.stdout == "" and empty.stderr.strip() == EMPTY_HINT
    assert json.loads(ok("events", "--json").stdout) == []
    follower = subprocess.Popen([str(SPOT), "events", "--follow", "--json"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    out, err = lines_of(follower.stdout), lines_of(follower.stderr)
    try:
        assert read_line(err, 30).startswith(EMPTY_HINT)
        assert read_line(err, 30).startswith("following new events")
        failed = run_spot("sample")
        assert failed.returncode == 1
        followed = json.loads(read_line(out, 30))  # printed as it happened
        assert followed["kind"] == "sample_failed"
    finally:
        follower.send_signal(signal.SIGINT)  # Ctrl-C ends --follow
        assert follower.wait(timeout=30) == 0
    [event] = events_json()
    assert event["source"] == "sampler" and event["kind"] == "sample_failed" and event["tier"] is None
    assert event["message"].startswith("billing sample failed for provider sim:")
    assert events_json("--tier", "demo") == []  # the sampler's runs are fleet-wide


def test_a_failover_is_an_event_and_a_log_line(fleet, tmp_path: Path, home: Path) -> None:  # noqa: ANN001, F811
    write_config(fleet.base_url)  # demo, with demo-ondemand as its fallback
    ok("up", "demo")
    ok("hibernate", "demo")
    fleet.fault(kind="restore_capacity", count=100, mode="reject")
    gateway = start_gateway(tmp_path, home)  # text log, the default
    try:
        import openai

        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.key, max_retries=0, timeout=120)
        reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert reply.usage.completion_tokens > 0
        wait_for(lambda: any(e["kind"] == "failover" for e in events_json()), 30, "the failover's event")
    finally:
        gateway.server.stop()
    [failover] = [e for e in events_json("--tier", "demo") if e["kind"] == "failover"]
    assert failover["detail"]["to_tier"] == "demo-ondemand" and "Insufficient capacity" in failover["message"]
    assert any(e["kind"] == "wake_failed" for e in events_json("--tier", "demo"))
    log = (tmp_path / "gateway.log").read_text()
    [line] = [line for line in log.splitlines() if "event=failover" in line]
    assert " WARNING failover: tier demo to demo-ondemand (wake failed: " in line and "to_tier=demo-ondemand" in line
    assert any("event=request" in line and "key=test" in line and "tier=demo-ondemand" in line and "status=200" in line
               for line in log.splitlines())


@pytest.mark.parametrize(("how", "access_lines"), [
    ([], 1),  # info by default: one line per request
    (["--log-level", "warning"], 0),  # the flag turns it off
    (["env:SPOT_GATEWAY__LOG_LEVEL=warning"], 0),  # and so does [gateway] log_level (here from the environment)
], ids=["default", "flag", "config"])
def test_the_access_log_follows_the_log_level(sim_engine: str, tmp_path: Path, home: Path, how: list[str],
                                              access_lines: int) -> None:
    key = json.loads(ok("keys", "create", "alice", "--json").stdout)["key"]
    port = free_port()
    flags = [f for f in how if not f.startswith("env:")]
    env = dict(f.removeprefix("env:").split("=", 1) for f in how if f.startswith("env:"))
    server = ServerProcess([str(SPOT), "serve", "--port", str(port), "--upstream", f"{MODEL}={sim_engine}", *flags],
                           env=clean_env(home, **env), log_path=tmp_path / "gateway.log",
                           health_url=f"http://127.0.0.1:{port}/health").start()
    try:
        import openai

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    finally:
        server.stop()  # the log's queue is written out before the worker exits
    lines = [line for line in (tmp_path / "gateway.log").read_text().splitlines() if "event=request" in line]
    assert len(lines) == access_lines
    if access_lines:
        [line] = lines
        assert " INFO request " in line and "key=alice" in line and f"model={MODEL}" in line and "status=200" in line
        assert key not in (tmp_path / "gateway.log").read_text()


def test_the_events_query_on_a_seeded_database(home: Path) -> None:
    """queries/events.sql on hand-written rows of each table: order, sources, --tier, --since, --limit."""
    from spotinference.events import read_events

    t = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    store = Store(home)
    with store.writing() as con:
        con.execute("INSERT INTO fleet_events VALUES (?, 'demo', 'spot-demo-1', 'vm-1', 'hibernated', 'waking', "
                    "'gateway: request for m held', NULL)", [t])
        con.execute("INSERT INTO fleet_events VALUES (?, 'demo', NULL, NULL, NULL, NULL, 'woke in 5.0 s (gateway: x)', "
                    "'{\"kind\": \"woke\", \"wake_s\": 5.0}')", [t + timedelta(minutes=1)])
        con.execute("INSERT INTO fleet_events VALUES (?, 'other', NULL, NULL, NULL, NULL, 'spot down', NULL)",
                    [t + timedelta(minutes=2)])
        con.execute("INSERT INTO gate_events VALUES (?, false, 'budget_exhausted', false, 'spent', '{\"budget_usd\": \"10\"}')",
                    [t + timedelta(minutes=3)])
        con.execute("INSERT INTO sample_runs (run_id, provider, started_at, finished_at, ok, error, resource_count, seq) "
                    "VALUES ('r1', 'sim', ?, ?, false, 'timed out', 0, 1), ('r2', 'sim', ?, ?, true, NULL, 1, 2)",
                    [t + timedelta(minutes=4)] * 2 + [t + timedelta(minutes=5)] * 2)
        con.execute("INSERT INTO billing_samples (run_id, sampled_at, provider, resource_id, resource_type, name, tier, "
                    "usd_per_hour, total_bill_usd, active, raw) VALUES ('r2', ?, 'sim', '7', 'vm', 'spot-demo-1', 'demo', "
                    "1, 2.5, true, '{}')", [t + timedelta(minutes=5)])
        con.execute("INSERT INTO billing_anomalies VALUES ('r2', ?, 'sim', 'vm', '7', 'spot-demo-1', 'decrease', 2.5, 3.0, '{}')",
                    [t + timedelta(minutes=5)])
    events = read_events(store)
    assert [(e.source, e.kind, e.tier) for e in events] == [
        ("fleet", "waking", "demo"), ("fleet", "woke", "demo"), ("fleet", "decision", "other"),
        ("gate", "gate_closed", None), ("sampler", "sample_failed", None), ("billing", "billing_anomaly", "demo")]
    assert events[0].message == "spot-demo-1: hibernated -> waking (gateway: request for m held)"
    assert events[1].detail == {"kind": "woke", "wake_s": 5.0}
    assert events[3].message == "budget gate closed: over budget (spent)" and events[3].detail["budget_usd"] == "10"
    assert events[4].message == "billing sample failed for provider sim: timed out"
    assert "the bill fell to $2.500000 below its high-water mark $3.000000" in events[5].message
    assert [e.kind for e in read_events(store, tier="demo")] == ["waking", "woke", "billing_anomaly"]
    assert [e.kind for e in read_events(store, since=t + timedelta(minutes=3))] == [
        "gate_closed", "sample_failed", "billing_anomaly"]
    assert [e.kind for e in read_events(store, last=2)] == ["sample_failed", "billing_anomaly"]  # the newest, oldest first
