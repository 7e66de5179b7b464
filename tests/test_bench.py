"""`spot bench` against real servers: the simulator's known timing validates the measurement
itself; the real gateway gives the added latency; real vLLM's own counter checks the token totals;
a real sshd carries `--on-node`. Tolerances are generous (the machine is shared) and nothing else
asserts on wall-clock time."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from spotinference.bench.loadgen import parse_metrics
from spotinference.bench.metrics import Slo, percentile, summarize
from spotinference.keys import create_key
from spotinference.store import Store
from tests.conftest import run_spot
from tests.servers import free_port, start_gateway, start_sim_engine
from tests.test_fleet import ok
from tests.test_fleet_ssh import ssh_cloud  # noqa: F401 - the fixture: a fleet on `spot sim cloud` over SSH

MODEL = "tiny-chat"
TTFT_MS, ITL_MS = 50.0, 10.0
# Every object of `spot bench --json` has at least these keys (the fixed interface).
FIXED_KEYS = {"target", "concurrency", "completed", "failed", "output_throughput", "median_ttft_ms", "p95_ttft_ms",
              "median_itl_ms", "p99_itl_ms", "median_e2el_ms"}
# ... and these of `vllm bench serve`'s names.
VLLM_KEYS = {"request_throughput", "total_token_throughput", "total_input_tokens", "total_output_tokens",
             "mean_ttft_ms", "std_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "median_tpot_ms", "p99_tpot_ms",
             "mean_itl_ms", "mean_e2el_ms", "p99_e2el_ms", "duration", "max_concurrency", "request_rate"}


@pytest.fixture(scope="module")
def timed_engine(tmp_path_factory: pytest.TempPathFactory):
    """`spot sim engine` with a known timing: 50 ms to the first token, then one every 10 ms."""
    server, url = start_sim_engine(tmp_path_factory.mktemp("bench-sim"),
                                   extra=["--ttft-ms", f"{TTFT_MS:g}", "--itl-ms", f"{ITL_MS:g}"])
    yield url
    server.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, timed_engine: str):
    home = tmp_path_factory.mktemp("bench-gw")
    key = create_key(Store(home), "bench").key
    server, url = start_gateway(home, {MODEL: timed_engine})
    yield url, key
    server.stop()


def bench(*args: str) -> list[dict]:
    result = run_spot("bench", "--model", MODEL, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def engine_counters(url: str) -> dict[str, float]:
    return parse_metrics(httpx.get(f"{url}/metrics", timeout=10).text)


def settled_counters(url: str, timeout_s: float = 30.0) -> dict[str, float]:
    """The engine's counters once nothing runs and two reads agree (vLLM updates them just after)."""
    deadline = time.monotonic() + timeout_s
    previous = None
    while time.monotonic() < deadline:
        now = engine_counters(url)
        if now == previous and not now.get("requests_running"):
            return now
        previous = now
        time.sleep(0.5)
    return previous or {}


# -- the measurement, validated against known truth ----------------------------------------

def test_the_measurement_reproduces_the_simulators_configured_timing(timed_engine: str) -> None:
    tokens = 64
    rows = bench("--base-url", timed_engine, "--target", "direct", "--concurrency", "1,4",
                 "--requests", "12", "--output-tokens", str(tokens), "--input-tokens", "32")
    assert [(r["target"], r["concurrency"]) for r in rows] == [("direct", 1), ("direct", 4)]
    for row in rows:
        assert FIXED_KEYS <= set(row) and VLLM_KEYS <= set(row)
        assert row["completed"] == 12 and row["failed"] == 0
        # Tokens from the server's usage, and the engine's own counter agrees.
        assert row["total_output_tokens"] == 12 * tokens == row["engine_generation_tokens"]
        assert row["total_input_tokens"] == row["engine_prompt_tokens"]
        assert abs(row["median_ttft_ms"] - TTFT_MS) <= 0.5 * TTFT_MS, row["median_ttft_ms"]
        assert abs(row["median_itl_ms"] - ITL_MS) <= 0.4 * ITL_MS, row["median_itl_ms"]
        assert abs(row["median_tpot_ms"] - ITL_MS) <= 0.4 * ITL_MS, row["median_tpot_ms"]
        per_request_ms = TTFT_MS + (tokens - 1) * ITL_MS
        assert abs(row["median_e2el_ms"] - per_request_ms) <= 0.3 * per_request_ms
        # Throughput: concurrency × tokens per request time (≈ concurrency × 1000 / ITL).
        expected = row["concurrency"] * tokens * 1000 / per_request_ms
        assert abs(row["output_throughput"] - expected) <= 0.3 * expected, (row["output_throughput"], expected)
        assert abs(row["output_throughput"] - row["concurrency"] * 1000 / ITL_MS) <= 0.35 * row["concurrency"] * 1000 / ITL_MS


def test_a_poisson_open_loop_and_goodput(timed_engine: str) -> None:
    rows = bench("--base-url", timed_engine, "--target", "direct", "--rate", "20", "--requests", "20",
                 "--output-tokens", "8", "--goodput", "ttft:1000", "tpot:200", "--endpoint", "chat")
    [row] = rows
    assert row["concurrency"] is None and row["request_rate"] == 20
    assert row["completed"] == 20 and row["good_requests"] == 20 and row["request_goodput"] > 0
    assert abs(row["median_ttft_ms"] - TTFT_MS) <= 0.5 * TTFT_MS  # the chat role chunk is not a token

    strict = bench("--base-url", timed_engine, "--target", "direct", "--concurrency", "2", "--requests", "4",
                   "--output-tokens", "8", "--goodput", "ttft:1")
    assert strict[0]["good_requests"] == 0 and strict[0]["request_goodput"] == 0


def test_the_saturation_stop_ends_a_sweep_past_the_knee(tmp_path: Path) -> None:
    # Each running request slows every step by 100 %: four at once give no more throughput than one.
    server, url = start_sim_engine(tmp_path, extra=["--ttft-ms", "20", "--itl-ms", "5", "--slowdown-per-request", "1.5"])
    try:
        rows = bench("--base-url", url, "--target", "direct", "--concurrency", "1,4,16", "--requests", "8",
                     "--output-tokens", "16")
        assert [r["concurrency"] for r in rows] == [1, 4]
        listed = json.loads(run_spot("bench", "list", "--json").stdout)
        assert listed[0]["levels"] == 2 and "saturation" in listed[0]["stopped_reason"]

        go_on = bench("--base-url", url, "--target", "direct", "--concurrency", "1,4,16", "--requests", "4",
                      "--output-tokens", "4", "--no-saturation-stop")
        assert [r["concurrency"] for r in go_on] == [1, 4, 16]
    finally:
        server.stop()


# -- through the gateway ------------------------------------------------------------------------

def test_both_targets_interleaved_through_a_real_gateway(gateway: tuple[str, str], timed_engine: str) -> None:
    gateway_url, key = gateway
    before = settled_counters(timed_engine)
    rows = bench("--base-url", gateway_url, "--key", key, "--direct-url", timed_engine, "--target", "both",
                 "--concurrency", "1,4", "--requests", "8", "--output-tokens", "16")
    after = settled_counters(timed_engine)
    assert [(r["target"], r["concurrency"]) for r in rows] == [
        ("gateway", 1), ("direct", 1), ("gateway", 4), ("direct", 4)]
    for row in rows:
        assert FIXED_KEYS <= set(row)
        assert row["completed"] == 8 and row["failed"] == 0 and row["total_output_tokens"] == 8 * 16
    for gateway_row in rows[::2]:
        for key_name in ("added_median_ttft_ms", "added_p95_ttft_ms", "added_p99_ttft_ms", "added_median_e2el_ms",
                         "added_p99_e2el_ms", "added_median_itl_ms"):
            assert isinstance(gateway_row[key_name], float)
    assert "added_median_ttft_ms" not in rows[1]
    assert sum(r["total_output_tokens"] for r in rows) == after["generation_tokens"] - before["generation_tokens"]

    table = run_spot("bench", "--model", MODEL, "--base-url", gateway_url, "--key", key, "--direct-url", timed_engine,
                     "--target", "both", "--concurrency", "2", "--requests", "4", "--output-tokens", "4", "--plot")
    assert table.returncode == 0, table.stderr
    assert "gateway's added latency" in table.stdout and "output throughput (tok/s)" in table.stdout


def error_lines(stderr: str) -> list[str]:
    """The error lines of a run (the rest of stderr is one progress line per level)."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_a_gateway_that_refuses_every_request_exits_1_and_saves_nothing(gateway: tuple[str, str]) -> None:
    for extra in ([], ["--json"]):
        result = run_spot("bench", "--model", MODEL, "--base-url", gateway[0], "--key", "sk-spot-wrong",
                          "--concurrency", "2", "--requests", "4", "--output-tokens", "4", *extra)
        assert result.returncode == 1, (result.stdout, result.stderr)
        [line] = error_lines(result.stderr)
        assert "every request failed" in line and "4 of 4" in line, line
        assert "HTTP 401: incorrect or revoked API key" in line, line
        assert "saved as run" not in result.stdout and "tok/s" not in result.stdout and result.stdout.strip() == ""
        assert "sk-spot-wrong" not in result.stdout + result.stderr
    assert json.loads(run_spot("bench", "list", "--json").stdout) == []


def test_some_requests_failed_shows_the_figures_and_exits_1(gateway: tuple[str, str], timed_engine: str) -> None:
    # The gateway refuses the key, the engine called directly answers: half the requests failed.
    result = run_spot("bench", "--model", MODEL, "--base-url", gateway[0], "--key", "sk-spot-wrong",
                      "--direct-url", timed_engine, "--target", "both", "--concurrency", "2", "--requests", "4",
                      "--output-tokens", "4", env={"COLUMNS": "200"})
    assert result.returncode == 1, (result.stdout, result.stderr)
    [line] = error_lines(result.stderr)
    assert "4 of 8 requests failed" in line and "gateway: 4 of 4" in line and "HTTP 401" in line, line
    assert "direct" in result.stdout and "failed (gateway, c=2): 4× HTTP 401" in result.stdout
    [saved] = json.loads(run_spot("bench", "list", "--json").stdout)
    assert saved["failed"] == 4 and saved["completed"] == 4
    assert "4 failed" in run_spot("bench", "list", env={"COLUMNS": "200"}).stdout


def test_the_gateway_and_key_come_from_openai_env_then_the_config(gateway: tuple[str, str], monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    url, key = gateway
    args = ["bench", "--model", MODEL, "--concurrency", "1", "--requests", "2", "--output-tokens", "4", "--json"]
    # Like any OpenAI client: OPENAI_BASE_URL (with its /v1) and OPENAI_API_KEY.
    result = run_spot(*args, env={"OPENAI_BASE_URL": f"{url}/v1", "OPENAI_API_KEY": key})
    assert result.returncode == 0, result.stderr
    [row] = json.loads(result.stdout)
    assert row["target"] == "gateway" and row["completed"] == 2
    # An explicit flag wins over the environment.
    wrong = run_spot(*args, "--key", "sk-spot-wrong", env={"OPENAI_BASE_URL": f"{url}/v1", "OPENAI_API_KEY": key})
    assert wrong.returncode == 1 and "HTTP 401" in error_lines(wrong.stderr)[0]
    assert key not in wrong.stdout + wrong.stderr

    # Without a URL anywhere, the gateway is the configured one (gateway.host, gateway.port).
    port = int(url.rsplit(":", 1)[1])
    Path("spot.toml").write_text(f"[gateway]\nport = {port}\n")
    result = run_spot(*args, env={"OPENAI_API_KEY": key})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["completed"] == 2

    # ... and when nothing listens there, the one line names that URL and where it came from.
    idle = free_port()
    Path("spot.toml").write_text(f"[gateway]\nport = {idle}\n")
    result = run_spot(*args, env={"OPENAI_API_KEY": key})
    assert result.returncode == 1
    [line] = error_lines(result.stderr)
    assert f"http://127.0.0.1:{idle}" in line and "gateway.port" in line and "OPENAI_BASE_URL" in line, line


# -- saved runs ---------------------------------------------------------------------------------

def test_runs_are_saved_listed_and_compared(timed_engine: str, home: Path) -> None:
    first = bench("--base-url", timed_engine, "--target", "direct", "--concurrency", "1,2", "--requests", "4",
                  "--output-tokens", "8")
    second = bench("--base-url", timed_engine, "--target", "direct", "--concurrency", "2", "--requests", "4",
                   "--output-tokens", "16", "--input-tokens", "64")
    assert first[0]["run_id"] == 1 and second[0]["run_id"] == 2

    listed = json.loads(run_spot("bench", "list", "--json").stdout)
    assert [r["run_id"] for r in listed] == [2, 1]
    assert listed[0]["model"] == MODEL and listed[0]["targets"] == "direct"
    assert listed[0]["prompt_shape"] == "~64 in / 16 out" and listed[0]["engine_version"].startswith("vllm")
    assert listed[1]["levels"] == 2
    table = run_spot("bench", "list", env={"COLUMNS": "200"})
    assert table.returncode == 0 and "~128 in / 8 out" in table.stdout

    compared = json.loads(run_spot("bench", "compare", "1", "2", "--json").stdout)
    assert compared["a"]["run_id"] == 1 and compared["b"]["run_id"] == 2
    levels = {(lv["target"], lv["concurrency"]): lv for lv in compared["levels"]}
    assert set(levels) == {("direct", 1), ("direct", 2)}
    figures = {f["metric"]: f for f in levels[("direct", 2)]["figures"]}
    out = figures["output_throughput"]
    assert out["a"] == first[1]["output_throughput"] and out["b"] == second[0]["output_throughput"]
    assert out["delta"] == pytest.approx(out["b"] - out["a"])
    assert figures["median_e2el_ms"]["delta"] > 0 and figures["median_e2el_ms"]["better"] is False
    assert all(f["b"] is None for f in levels[("direct", 1)]["figures"])  # only in run 1

    side_by_side = run_spot("bench", "compare", "1", "2", env={"COLUMNS": "200"})
    assert side_by_side.returncode == 0 and "Δ (B − A)" in side_by_side.stdout and "worse" in side_by_side.stdout

    unsaved = bench("--base-url", timed_engine, "--target", "direct", "--requests", "1", "--output-tokens", "2",
                    "--no-save")
    assert unsaved[0]["run_id"] is None
    assert len(json.loads(run_spot("bench", "list", "--json").stdout)) == 2


# -- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["--target", "sideways", "--base-url", "http://127.0.0.1:9"],
    ["--concurrency", "1,x", "--base-url", "http://127.0.0.1:9"],
    ["--concurrency", "0", "--base-url", "http://127.0.0.1:9"],
    ["--concurrency", "2", "--rate", "3", "--base-url", "http://127.0.0.1:9"],
    ["--requests", "3", "--duration", "5", "--base-url", "http://127.0.0.1:9"],
    ["--target", "both", "--base-url", "http://127.0.0.1:9"],
    ["--goodput", "latency:5", "--base-url", "http://127.0.0.1:9"],
    ["--spread", "1.5", "--base-url", "http://127.0.0.1:9"],
    ["--prompts", "missing.jsonl", "--base-url", "http://127.0.0.1:9"],
    ["--on-node", "not-a-node"],
])
def test_bad_input_is_one_line_and_exit_2(args: list[str]) -> None:
    result = run_spot("bench", "--model", MODEL, *args, "--json")
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: ")


def test_comparing_a_run_that_does_not_exist_is_exit_2() -> None:
    result = run_spot("bench", "compare", "7", "8")
    assert result.returncode == 2 and "no benchmark run 7" in result.stderr


def test_prompts_from_a_jsonl_file(timed_engine: str, tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "one two three"}\n\n{"prompt": "four five", "max_tokens": 3}\n')
    rows = bench("--base-url", timed_engine, "--target", "direct", "--requests", "4", "--output-tokens", "5",
                 "--prompts", str(path))
    assert rows[0]["completed"] == 4 and rows[0]["total_output_tokens"] == 5 + 3 + 5 + 3


# -- on the node, over a real sshd ----------------------------------------------------------------

@pytest.mark.slow
def test_on_node_runs_the_load_generator_on_the_node_over_ssh(ssh_cloud, home: Path) -> None:  # noqa: ANN001, F811
    ok("up", "demo")
    [node] = json.loads(ok("status", "--json").stdout)
    before = settled_counters(node["engine_url"])
    rows = bench("--on-node", "spot-demo-1", "--concurrency", "1,2", "--requests", "6", "--output-tokens", "12")
    after = settled_counters(node["engine_url"])
    assert [(r["target"], r["concurrency"]) for r in rows] == [("on-node", 1), ("on-node", 2)]
    for row in rows:
        assert FIXED_KEYS <= set(row)
        assert row["completed"] == 6 and row["failed"] == 0, row["failure_reasons"]
        assert row["total_output_tokens"] == 6 * 12 == row["engine_generation_tokens"]
        # Bench meets billing: the node's current rate over the measured throughput.
        expected = node["usd_per_hour"] / (row["output_throughput"] * 3600) * 1e6
        assert row["projected_usd_per_mtok_output"] == pytest.approx(expected, rel=1e-6)
    assert sum(r["total_output_tokens"] for r in rows) == after["generation_tokens"] - before["generation_tokens"]
    # The node keeps nothing of the benchmark.
    assert ok("ssh", "spot-demo-1", "--", "ls", "tmp").stdout.strip() == ""

    [saved] = json.loads(run_spot("bench", "list", "--json").stdout)
    assert saved["on_node"] == "spot-demo-1" and saved["tier"] == "demo" and saved["targets"] == "on-node"
    # An OPENAI_BASE_URL in the shell names a gateway: --on-node still measures the node's engine.
    table = run_spot("bench", "--on-node", "spot-demo-1", "--requests", "2", "--output-tokens", "2",
                     env={"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})
    assert table.returncode == 0, table.stderr
    assert "PROJECTION AT FULL UTILISATION" in table.stdout and "spot cost" in table.stdout


# -- real vLLM ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_against_real_vllm_the_token_totals_match_its_generation_counter(vllm_engine: str, tmp_path: Path) -> None:
    gw_home = tmp_path / "gw"
    key = create_key(Store(gw_home), "bench").key
    server, gateway_url = start_gateway(gw_home, {MODEL: vllm_engine})
    try:
        before = settled_counters(vllm_engine)
        rows = bench("--base-url", gateway_url, "--key", key, "--direct-url", vllm_engine, "--target", "both",
                     "--concurrency", "1,4", "--requests", "4", "--output-tokens", "16", "--input-tokens", "32")
        after = settled_counters(vllm_engine)
    finally:
        server.stop()
    assert {(r["target"], r["concurrency"]) for r in rows} == {(t, c) for t in ("gateway", "direct") for c in (1, 4)}
    for row in rows:
        assert row["completed"] == 4 and row["failed"] == 0, row["failure_reasons"]
        assert row["total_output_tokens"] == 4 * 16  # ignore_eos + max_tokens, counted from usage
        assert row["median_ttft_ms"] > 0 and row["median_itl_ms"] > 0
    assert sum(r["total_output_tokens"] for r in rows) == after["generation_tokens"] - before["generation_tokens"]
    assert sum(r["total_input_tokens"] for r in rows) == after["prompt_tokens"] - before["prompt_tokens"]


# -- the arithmetic -------------------------------------------------------------------------------

def test_percentiles_tpot_and_goodput_by_hand() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5 and percentile([5.0], 99) == 5.0
    assert percentile([0.0, 10.0], 90) == pytest.approx(9.0)
    records = [
        {"target": "t", "start": 0, "ttft": 0.1, "itl": [0.01, 0.03], "e2e": 0.14, "prompt_tokens": 5,
         "completion_tokens": 3, "error": None},
        {"target": "t", "start": 0, "ttft": 0.3, "itl": [0.02], "e2e": 0.34, "prompt_tokens": 7,
         "completion_tokens": 3, "error": None},  # 3 tokens in 2 chunks: TPOT still (E2E − TTFT) / 2
        {"target": "t", "start": 0, "ttft": None, "itl": [], "e2e": None, "prompt_tokens": None,
         "completion_tokens": None, "error": "HTTP 503: tier asleep for 12 s"},
    ]
    row = summarize(records, target="t", duration_s=2.0, slo=Slo.parse(["ttft:200", "tpot:25"]))
    assert row["completed"] == 2 and row["failed"] == 1 and row["failure_reasons"] == {"HTTP 503: tier asleep for # s": 1}
    assert row["total_output_tokens"] == 6 and row["output_throughput"] == 3.0 and row["total_token_throughput"] == 9.0
    assert row["mean_ttft_ms"] == pytest.approx(200.0) and row["median_tpot_ms"] == pytest.approx(20.0)
    assert row["median_itl_ms"] == pytest.approx(20.0) and row["median_e2el_ms"] == pytest.approx(240.0)
    assert row["good_requests"] == 1 and row["request_goodput"] == 0.5
