"""`spot bench` against real servers: the simulator's known timing validates the measurement
itself; the real gateway gives the added latency; real vLLM's own counter checks the token totals;
a real sshd carries `--on-node`. Tolerances are generous (the machine is shared) and nothing else
asserts on wall-clock time."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pytest

from spotinference.bench.apis import APIS, DONE, TOKEN, error_message
from spotinference.bench.loadgen import parse_metrics
from spotinference.bench.metrics import Slo, percentile, summarize
from spotinference.keys import create_key
from spotinference.store import Store
from tests.conftest import run_spot
from tests.servers import free_port, start_gateway, start_sim_engine
from tests.test_fleet import ok
from tests.test_fleet_ssh import ssh_cloud  # noqa: F401 - the fixture: a fleet on `spot sim cloud` over SSH
from tests.token_log import logged_rows

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


# -- every API: --api chat|completions|responses|messages|embeddings ------------------------------

EMBED_MODEL = "tiny-embed"
GENERATING = ("chat", "completions", "responses", "messages")
ROUTES = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "responses": "/v1/responses",
          "messages": "/v1/messages", "embeddings": "/v1/embeddings"}


@pytest.fixture
def api_gateway(tmp_path: Path, timed_engine: str, sim_pooling_engine: str):
    """A gateway with a ledger of its own, in front of `spot sim engine` (generate) and (pooling)."""
    home = tmp_path / "gw"
    key = create_key(Store(home), "bench").key
    server, url = start_gateway(home, {MODEL: timed_engine, EMBED_MODEL: sim_pooling_engine})
    yield url, key, home
    server.stop()


@pytest.mark.parametrize("api", [*GENERATING, "embeddings"])
def test_each_api_through_the_gateway_counts_the_tokens_its_ledger_logged(api: str, api_gateway) -> None:  # noqa: ANN001
    url, key, home = api_gateway
    model = EMBED_MODEL if api == "embeddings" else MODEL
    result = run_spot("bench", "--api", api, "--model", model, "--base-url", url, "--key", key,
                      "--concurrency", "1,3", "--requests", "6", "--no-saturation-stop", "--json",
                      *([] if api == "embeddings" else ["--output-tokens", "8"]))
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(r["api"], r["concurrency"], r["completed"], r["failed"]) for r in rows] == [(api, 1, 6, 0), (api, 3, 6, 0)]
    ledger = logged_rows(home, expect=12)
    assert len(ledger) == 12 and {(r["endpoint"], r["http_status"]) for r in ledger} == {(ROUTES[api], 200)}
    [key_id] = {r["key_id"] for r in ledger}  # the key went the API's own way (x-api-key for messages)
    assert key_id is not None
    # The benchmark's tokens are the API's own usage: exactly what the gateway logged for those requests.
    assert sum(r["total_input_tokens"] for r in rows) == sum(r["prompt_tokens"] for r in ledger) > 0
    assert sum(r["total_output_tokens"] for r in rows) == sum(r["completion_tokens"] for r in ledger)
    for row in rows:
        assert row["median_e2el_ms"] > 0 and row["request_throughput"] > 0
        if api == "embeddings":  # not streamed: no first token, nothing generated
            assert row["median_ttft_ms"] is None and row["median_tpot_ms"] is None and row["median_itl_ms"] is None
            assert row["total_output_tokens"] == 0 and row["input_throughput"] > 0
        else:
            assert row["median_ttft_ms"] > 0 and row["median_itl_ms"] > 0 and row["total_output_tokens"] > 0
            assert abs(row["median_ttft_ms"] - TTFT_MS) <= 0.5 * TTFT_MS, row["median_ttft_ms"]
    if api in ("chat", "completions", "responses"):  # ignore_eos: exactly --output-tokens each (Messages has none)
        assert sum(r["total_output_tokens"] for r in rows) == 12 * 8
    [saved] = json.loads(run_spot("bench", "list", "--json").stdout)
    assert saved["api"] == api


def test_the_table_names_the_api_and_embeddings_show_latency_not_ttft(api_gateway) -> None:  # noqa: ANN001
    url, key, _ = api_gateway
    args = ["--base-url", url, "--key", key, "--requests", "2", "--no-save", "--plot"]
    streamed = run_spot("bench", "--api", "responses", "--model", MODEL, "--output-tokens", "4", *args,
                        env={"COLUMNS": "200"})
    assert streamed.returncode == 0, streamed.stderr
    shown = " ".join(streamed.stdout.split())  # table titles wrap at the table's width
    assert "spot bench --api responses: tiny-chat via gateway" in shown
    assert "TTFT p50" in shown and "out tok/s" in shown
    assert "--api responses: median_ttft_ms (ms)" in shown and "output throughput (tok/s)" in shown

    pooled = run_spot("bench", "--api", "embeddings", "--model", EMBED_MODEL, *args, env={"COLUMNS": "200"})
    assert pooled.returncode == 0, pooled.stderr
    shown = " ".join(pooled.stdout.split())
    assert "spot bench --api embeddings: tiny-embed via gateway; ~128 in tokens;" in shown
    assert "is not streamed, so there is no TTFT, TPOT or ITL; E2E is the whole request" in shown
    assert "TTFT" not in shown.replace("no TTFT", "") and "out tok/s" not in shown
    assert "in tok/s" in shown and "E2E p50" in shown
    assert "--api embeddings: median_e2el_ms (ms)" in shown and "input throughput (tok/s)" in shown
    assert "input tok/s" in pooled.stderr  # the progress line of the level


@pytest.mark.parametrize("api", [*GENERATING, "embeddings"])
def test_a_wrong_key_or_model_on_each_api_is_reported_as_failures_and_exit_1(
        api: str, api_gateway, timed_engine: str, sim_pooling_engine: str) -> None:  # noqa: ANN001
    url, key, home = api_gateway
    model = EMBED_MODEL if api == "embeddings" else MODEL
    common = ["bench", "--api", api, "--concurrency", "2", "--requests", "3"]
    # The gateway refuses the key, in the API's own error shape (Anthropic's for messages).
    refused = run_spot(*common, "--model", model, "--base-url", url, "--key", "sk-spot-wrong")
    assert refused.returncode == 1, (refused.stdout, refused.stderr)
    [line] = error_lines(refused.stderr)
    assert "every request failed (3 of 3)" in line and "HTTP 401: incorrect or revoked API key" in line, line
    assert "sk-spot-wrong" not in refused.stdout + refused.stderr and refused.stdout == ""
    # The engine itself does not serve the model: its own message, summarised.
    engine = sim_pooling_engine if api == "embeddings" else timed_engine
    unknown = run_spot(*common, "--model", "nope", "--base-url", engine, "--target", "direct", "--json")
    assert unknown.returncode == 1, (unknown.stdout, unknown.stderr)
    [line] = error_lines(unknown.stderr)
    assert "every request failed (3 of 3)" in line and "HTTP 404: The model `nope` does not exist." in line, line
    # ... and through the gateway, which answers for the engine: the same count, its own words.
    routed = run_spot(*common, "--model", "nope", "--base-url", url, "--key", key)
    assert routed.returncode == 1
    [line] = error_lines(routed.stderr)
    assert "every request failed (3 of 3)" in line and "HTTP 404: The model 'nope' does not exist" in line, line
    assert json.loads(run_spot("bench", "list", "--json").stdout) == []


def test_runs_of_different_apis_are_listed_as_such_and_compared_only_when_alike(
        timed_engine: str, sim_pooling_engine: str) -> None:
    args = ["--target", "direct", "--concurrency", "1", "--requests", "2"]
    bench("--base-url", timed_engine, "--api", "chat", "--output-tokens", "4", *args)
    bench("--base-url", timed_engine, "--api", "responses", "--output-tokens", "4", *args)
    result = run_spot("bench", "--model", EMBED_MODEL, "--base-url", sim_pooling_engine, "--api", "embeddings",
                      *args, "--json")
    assert result.returncode == 0, result.stderr
    listed = json.loads(run_spot("bench", "list", "--json").stdout)
    assert [(r["run_id"], r["api"], r["prompt_shape"]) for r in listed] == [
        (3, "embeddings", "~128 in"), (2, "responses", "~128 in / 4 out"), (1, "chat", "~128 in / 4 out")]
    table = run_spot("bench", "list", env={"COLUMNS": "200"}).stdout
    assert "embeddings" in table and "responses" in table

    # Two generating APIs compare, and the answer says they differ.
    compared = json.loads(run_spot("bench", "compare", "1", "2", "--json").stdout)
    assert compared["same_api"] is False and (compared["a"]["api"], compared["b"]["api"]) == ("chat", "responses")
    side_by_side = run_spot("bench", "compare", "1", "2", env={"COLUMNS": "200"})
    assert side_by_side.returncode == 0
    assert "A and B benchmarked different APIs (chat, responses)" in side_by_side.stdout
    assert "A = run 1: --api chat" in side_by_side.stdout and "B = run 2: --api responses" in side_by_side.stdout
    assert json.loads(run_spot("bench", "compare", "1", "1", "--json").stdout)["same_api"] is True
    # Embeddings against a generating API: nothing in common to set side by side.
    refused = run_spot("bench", "compare", "1", "3")
    assert refused.returncode == 2 and refused.stdout == ""
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "run 1 benchmarked --api chat and run 3 --api embeddings" in refused.stderr

    # A run saved before --api existed said `endpoint`; it still reads as that API.
    with Store(Path(os.environ["SPOT_HOME"])).transaction() as con:
        con.execute("UPDATE bench_runs SET parameters = json_object('endpoint', 'completions', 'model', 'tiny-chat')"
                    " WHERE run_id = 1")
    assert json.loads(run_spot("bench", "list", "--json").stdout)[-1]["api"] == "completions"


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
    ["--api", "sideways", "--base-url", "http://127.0.0.1:9"],
    ["--api", "embeddings", "--output-tokens", "8", "--base-url", "http://127.0.0.1:9"],
    ["--api", "embeddings", "--goodput", "ttft:500", "--base-url", "http://127.0.0.1:9"],
    ["--api", "chat", "--endpoint", "completions", "--base-url", "http://127.0.0.1:9"],
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


def test_a_prompts_file_of_messages_feeds_the_apis_that_take_messages(timed_engine: str, tmp_path: Path) -> None:
    path = tmp_path / "chats.jsonl"
    path.write_text('{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}\n'
                    '{"prompt": "four five", "max_tokens": 3}\n')
    args = ["--base-url", timed_engine, "--target", "direct", "--requests", "4", "--output-tokens", "5",
            "--prompts", str(path)]
    for api in ("chat", "responses", "messages"):  # Messages takes the system turn as its `system`
        [row] = bench("--api", api, *args)
        assert (row["api"], row["completed"], row["failed"]) == (api, 4, 0), row["failure_reasons"]
        assert row["total_input_tokens"] > 0 and row["total_output_tokens"] > 0
    for api in ("completions", "embeddings"):
        result = run_spot("bench", "--model", MODEL, "--api", api, *args[:-4], "--prompts", str(path))
        assert result.returncode == 2 and result.stdout == "", result.stderr
        assert result.stderr.strip().endswith("a line with messages needs --api chat, responses or messages")


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


@pytest.mark.slow
def test_against_real_vllm_responses_and_messages_count_what_vllm_and_the_ledger_count(
        vllm_engine: str, tmp_path: Path) -> None:
    gw_home = tmp_path / "gw"
    key = create_key(Store(gw_home), "bench").key
    server, gateway_url = start_gateway(gw_home, {MODEL: vllm_engine})
    try:
        for api in ("responses", "messages"):
            before = settled_counters(vllm_engine)
            rows = bench("--api", api, "--base-url", gateway_url, "--key", key, "--direct-url", vllm_engine,
                         "--target", "both", "--concurrency", "2", "--requests", "4", "--output-tokens", "16",
                         "--input-tokens", "32")
            after = settled_counters(vllm_engine)
            assert [(r["api"], r["target"], r["completed"], r["failed"]) for r in rows] == [
                (api, "gateway", 4, 0), (api, "direct", 4, 0)], [r["failure_reasons"] for r in rows]
            for row in rows:
                assert row["median_ttft_ms"] > 0 and row["total_output_tokens"] > 0
                if api == "responses":  # vLLM's Responses API takes ignore_eos; its Messages API does not
                    assert row["total_output_tokens"] == 4 * 16
            assert sum(r["total_output_tokens"] for r in rows) == after["generation_tokens"] - before["generation_tokens"]
            assert sum(r["total_input_tokens"] for r in rows) == after["prompt_tokens"] - before["prompt_tokens"]
            ledger = [r for r in logged_rows(gw_home, expect=4 if api == "responses" else 8)
                      if r["endpoint"] == ROUTES[api]]
            assert len(ledger) == 4 and {r["http_status"] for r in ledger} == {200}
            assert sum(r["completion_tokens"] for r in ledger) == rows[0]["total_output_tokens"]
            assert sum(r["prompt_tokens"] for r in ledger) == rows[0]["total_input_tokens"]
    finally:
        server.stop()


# -- each API's reader, on real vLLM's own bytes ------------------------------------------------

CAPTURED = json.loads((Path(__file__).parent / "engines" / "vllm_routes.json").read_text())


def sse_data(body: str) -> list[dict]:
    return [json.loads(line[5:]) for line in body.splitlines() if line.startswith("data:")]


@pytest.mark.parametrize("api, capture", [("responses", "responses_stream"), ("messages", "messages_stream")])
def test_each_reader_finds_the_text_and_usage_in_real_vllms_stream(api: str, capture: str) -> None:
    events = sse_data(CAPTURED[capture]["body"])
    reader = APIS[api].reader()
    seen = [reader.read(event) for event in events]
    # One token event per text delta vLLM sent; the stream ends on its last event.
    texts = [e for e in events if e["type"] in ("response.output_text.delta", "content_block_delta")]
    assert seen.count(TOKEN) == len(texts) > 0 and seen[-1] == DONE
    final = events[-1]["response"]["usage"] if api == "responses" else next(
        e["usage"] for e in events if e["type"] == "message_delta")
    assert (reader.input_tokens, reader.output_tokens) == (final["input_tokens"], final["output_tokens"])
    assert reader.output_tokens > 0 and reader.input_tokens > 0


def test_the_embeddings_reader_and_every_apis_error_shape_on_real_vllms_answers() -> None:
    answer = json.loads(CAPTURED["embeddings"]["body"])
    reader = APIS["embeddings"].reader()
    reader.read_whole(answer)
    assert (reader.input_tokens, reader.output_tokens) == (answer["usage"]["prompt_tokens"], 0)
    for capture, message in [
        ("messages_unknown_model", "The model `nope` does not exist. Valid aliases: tiny-chat."),  # Anthropic's shape
        ("responses_unknown_model", "The model `nope` does not exist. Valid aliases: tiny-chat."),
        ("embeddings_unknown_model", "The model `nope` does not exist."),
    ]:
        assert error_message(json.loads(CAPTURED[capture]["body"])) == message


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
