"""The gateway's contract, run against the simulator and against real vLLM on the CPU.

An unchanged OpenAI SDK must get through `spot serve` exactly what it gets from the engine
directly (same chunks, same fields; only ids and timestamps differ), and every token served must
land in the token log.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from spotinference.keys import create_key
from spotinference.store import Store
from tests.servers import ServerProcess, operator_headers, start_gateway
from tests.token_log import logged_rows

MODEL = "tiny-chat"
# `stack` takes its engine by name, so conftest cannot see the vllm_engine fixture: say it here.
ENGINES = ["sim", pytest.param("vllm", marks=[pytest.mark.slow, pytest.mark.shares("real-engines")])]
MESSAGES = [{"role": "user", "content": "Say something about rented GPUs."}]
STREAM_OPTIONS = [
    None,
    {"include_usage": True},
    {"include_usage": True, "continuous_usage_stats": True},
]


@dataclass
class Stack:
    engine: str
    engine_url: str
    gateway_url: str
    key: str
    home: Path
    gateway: ServerProcess

    def direct(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.engine_url}/v1", api_key="unused", max_retries=0)

    def via(self, key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.gateway_url}/v1", api_key=key or self.key, max_retries=0)


@pytest.fixture(scope="module", params=ENGINES)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    engine_url = request.getfixturevalue(f"{request.param}_engine")
    home = tmp_path_factory.mktemp(f"gateway-{request.param}")
    key = create_key(Store(home), "contract-tests").key
    gateway, url = start_gateway(home, {MODEL: engine_url})
    yield Stack(request.param, engine_url, url, key, home, gateway)
    gateway.stop()


def comparable(item: Any) -> Any:
    data = item.model_dump() if hasattr(item, "model_dump") else dict(item)
    data.pop("id", None)
    data.pop("created", None)
    return data


def chat(client: openai.OpenAI, **overrides: Any) -> Any:
    args = {"model": MODEL, "messages": MESSAGES, "max_tokens": 12, "temperature": 0.0, "seed": 1}
    return client.chat.completions.create(**{**args, **overrides})


def completion(client: openai.OpenAI, **overrides: Any) -> Any:
    args = {"model": MODEL, "prompt": "The cheapest GPU hour is", "max_tokens": 12, "temperature": 0.0, "seed": 1}
    return client.completions.create(**{**args, **overrides})


# -- the SDK sees the same thing through the gateway as directly -----------------------------------

def test_models_lists_what_the_fleet_serves(stack: Stack) -> None:
    assert [m.id for m in stack.via().models.list()] == [MODEL]


@pytest.mark.parametrize("call", [chat, completion], ids=["chat", "completions"])
def test_non_streamed_answers_are_the_engines(stack: Stack, call: Any) -> None:
    direct, via = call(stack.direct()), call(stack.via())
    assert comparable(via) == comparable(direct)
    assert via.usage.completion_tokens > 0


def shape(value: Any) -> Any:
    """A chunk's structure: its keys and the kinds of its values, not the values themselves."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__


# The fields a stream spreads over its chunks: a merged chunk carries them joined.
_JOINED = {"content", "text", "reasoning_content", "reasoning"}


def _merge(into: Any, new: Any, key: str | None = None) -> Any:
    if isinstance(new, dict):
        merged = dict(into) if isinstance(into, dict) else {}
        for k, v in new.items():
            merged[k] = _merge(merged.get(k), v, k)
        return merged
    if isinstance(new, list):  # choices, by position
        old = into if isinstance(into, list) else []
        return [_merge(old[i] if i < len(old) else None, v) for i, v in enumerate(new)] + old[len(new):]
    if key in _JOINED and isinstance(new, str):
        return (into or "") + new
    return into if new is None else new


def coalesced(chunks: list[dict]) -> list[dict]:
    """A stream with its chunk boundaries taken out: one chunk for all those with choices (text
    joined, every other field its last value: the role, the finish reason, the running usage),
    then each chunk without choices (the usage chunk) as it came."""
    merged: dict = {}
    rest = []
    for chunk in chunks:
        if chunk["choices"]:
            merged = _merge(merged, chunk)
        else:
            rest.append(chunk)
    return [merged, *rest]


def assert_same_stream(stack: Stack, via: list[dict], direct: list[dict]) -> None:
    """Identical for the deterministic simulator. Real vLLM merges tokens into one chunk now and
    then when its API server falls behind (often under a parallel suite's load), so two runs of
    the same request can differ in chunk boundaries only: with the boundaries taken out every
    field agrees, and the first and last chunks agree in structure."""
    if stack.engine == "sim":
        assert via == direct
        return
    assert coalesced(via) == coalesced(direct)
    assert shape(via[0]) == shape(direct[0]) and shape(via[-1]) == shape(direct[-1])


@pytest.mark.parametrize("options", STREAM_OPTIONS, ids=["no-options", "include-usage", "continuous-usage"])
@pytest.mark.parametrize("call", [chat, completion], ids=["chat", "completions"])
def test_streamed_chunks_are_the_engines(stack: Stack, call: Any, options: dict | None) -> None:
    extra = {"stream_options": options} if options else {}
    direct = [comparable(c) for c in call(stack.direct(), stream=True, **extra)]
    via = [comparable(c) for c in call(stack.via(), stream=True, **extra)]
    assert_same_stream(stack, via, direct)
    with_usage = [c for c in via if c.get("usage")]
    if options is None:
        assert with_usage == []
    elif options.get("continuous_usage_stats"):
        assert len(with_usage) == len(via)
    else:
        assert len(with_usage) == 1 and with_usage[0]["choices"] == []


def _raw_events(url: str, key: str, body: dict) -> list[str]:
    with httpx.stream("POST", url, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60) as response:
        assert response.status_code == 200
        text = response.read().decode()
    normalised = re.sub(r'"id":"[^"]*"', '"id":"X"', text)
    normalised = re.sub(r'"created":\d+', '"created":0', normalised)
    return normalised.split("\n\n")


@pytest.mark.parametrize("options", STREAM_OPTIONS, ids=["no-options", "include-usage", "continuous-usage"])
def test_stream_bytes_are_the_engines_byte_for_byte(stack: Stack, options: dict | None) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 8, "temperature": 0.0, "seed": 1, "stream": True}
    if options:
        body["stream_options"] = options
    direct = _raw_events(f"{stack.engine_url}/v1/chat/completions", "unused", body)
    via = _raw_events(f"{stack.gateway_url}/v1/chat/completions", stack.key, body)
    if stack.engine == "vllm":
        # Chunk boundaries may differ between two runs on real vLLM (see assert_same_stream):
        # compare the events' bytes with the token text masked, first and last exactly.
        mask = lambda events: [re.sub(r'"content":"(?:[^"\\]|\\.)*"', '"content":"T"', e) for e in events]  # noqa: E731
        chunks = lambda events: [json.loads(e.removeprefix("data: ")) for e in events if e.startswith("data: {")]
        assert coalesced(chunks(via)) == coalesced(chunks(direct))
        direct, via = mask(direct), mask(via)
        assert via[:2] == direct[:2] and via[-4:] == direct[-4:]
        return
    assert via == direct


def test_async_client_streams(stack: Stack) -> None:
    async def run() -> tuple[list, list]:
        args = {"model": MODEL, "messages": MESSAGES, "max_tokens": 10, "temperature": 0.0, "seed": 1,
                "stream": True, "stream_options": {"include_usage": True}}
        async with openai.AsyncOpenAI(base_url=f"{stack.engine_url}/v1", api_key="unused", max_retries=0) as direct, \
                openai.AsyncOpenAI(base_url=f"{stack.gateway_url}/v1", api_key=stack.key, max_retries=0) as via:
            got_direct = [comparable(c) async for c in await direct.chat.completions.create(**args)]
            got_via = [comparable(c) async for c in await via.chat.completions.create(**args)]
            assert got_via[-1]["usage"]["completion_tokens"] == 10
            non_streamed = await via.chat.completions.create(**{**args, "stream": False, "stream_options": None})
            assert non_streamed.usage.completion_tokens > 0
        return got_direct, got_via

    direct, via = asyncio.run(run())
    assert_same_stream(stack, via, direct)


# -- every token lands in the log and matches the engine's own counters ---------------------------

def engine_counters(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    totals: dict[str, float] = {}
    for name in ("vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:num_requests_running"):
        values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                  if line.startswith(name) and not line.startswith("#")]
        totals[name] = sum(values)
    return totals


def wait_idle(url: str, timeout_s: float = 30) -> dict[str, float]:
    deadline = time.monotonic() + timeout_s
    while True:
        counters = engine_counters(url)
        if counters["vllm:num_requests_running"] == 0 or time.monotonic() > deadline:
            return counters
        time.sleep(0.1)


def test_the_token_log_matches_the_engines_counters(stack: Stack) -> None:
    before = wait_idle(stack.engine_url)
    ids: set[str] = set()
    client = stack.via()
    for options in STREAM_OPTIONS:
        extra = {"stream_options": options} if options else {}
        stream = chat(client, stream=True, **extra)
        for _ in stream:
            pass
        ids.add(stream.response.headers["x-request-id"])
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, max_tokens=9)
    ids.add(raw.headers["x-request-id"])
    raw = client.completions.with_raw_response.create(model=MODEL, prompt="abc", max_tokens=5)
    ids.add(raw.headers["x-request-id"])
    after = wait_idle(stack.engine_url)
    rows = logged_rows(stack.home, ids, expect=len(ids))
    assert len(rows) == len(ids)
    assert all(r["http_status"] == 200 and r["completion_tokens"] > 0 for r in rows)
    assert sum(r["prompt_tokens"] for r in rows) == after["vllm:prompt_tokens_total"] - before["vllm:prompt_tokens_total"]
    assert sum(r["completion_tokens"] for r in rows) == (
        after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"]
    )


def stream_then_hang_up(stack: Stack, body: dict, events: int) -> str:
    """Read a few events of a stream over a plain socket, then close it: a client that leaves."""
    host, port = stack.gateway_url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {stack.key}\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload
        )
        received = b""
        while received.count(b"data: ") < events:
            chunk = sock.recv(65536)
            assert chunk, f"the stream ended early: {received!r}"
            received += chunk
    match = re.search(rb"x-request-id: (\S+)", received, re.IGNORECASE)
    assert match, received[:500]
    return match[1].decode()


def abort_a_stream(stack: Stack) -> tuple[dict, float, float]:
    """Start a long stream, leave after a few chunks; the row and the engine's counter deltas."""
    before = wait_idle(stack.engine_url)
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 450, "ignore_eos": True, "stream": True}
    request_id = stream_then_hang_up(stack, body, events=6)
    after = wait_idle(stack.engine_url)
    (row,) = logged_rows(stack.home, {request_id})
    generated = after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"]
    assert row["prompt_tokens"] == after["vllm:prompt_tokens_total"] - before["vllm:prompt_tokens_total"]
    return row, generated, after["vllm:num_requests_running"]


def test_an_aborted_stream_is_logged_and_stops_the_engine(stack: Stack) -> None:
    # Real vLLM on these 2 cores can finish 450 tokens in half a second, and now and then the test
    # client is not scheduled until the stream is over, so it never really left early (the row
    # then says 200 with 450 tokens). Such a try proves nothing either way; up to three are made.
    for _ in range(3):
        row, generated, running = abort_a_stream(stack)
        if not (row["http_status"] == 200 and row["completion_tokens"] == 450):
            break
    assert row["client_aborted"] is True and row["http_status"] == 499
    assert generated < 450, "the engine went on generating after the client left"
    assert running == 0
    # The log holds the last running total the engine sent before it noticed the disconnect; the
    # engine may count the few tokens it made in between, but never fewer than were logged.
    assert 5 <= row["completion_tokens"] <= generated
    assert generated - row["completion_tokens"] <= 8


def test_requests_command_lists_the_log(stack: Stack) -> None:
    chat(stack.via())
    logged_rows(stack.home)
    from tests.conftest import run_spot

    result = run_spot("requests", "--last", "3", "--json", env={"SPOT_HOME": str(stack.home)})
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert 1 <= len(rows) <= 3
    newest = rows[0]
    for key in ("id", "model", "key_name", "started_at", "ttft_ms", "prompt_tokens", "completion_tokens", "status", "aborted"):
        assert key in newest
    assert newest["key_name"] == "contract-tests" and newest["model"] == MODEL
    assert [r["started_at"] for r in rows] == sorted((r["started_at"] for r in rows), reverse=True)


# -- errors are OpenAI-shaped, with the right status ------------------------------------------------

def post(stack: Stack, body: bytes | dict, *, key: str | None = "default", path: str = "/v1/chat/completions") -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {stack.key if key == 'default' else key}"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{stack.gateway_url}{path}", content=content, headers=headers, timeout=30)


def assert_openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"} and error["message"]
    return error


def test_missing_or_wrong_key_is_401(stack: Stack) -> None:
    assert_openai_error(post(stack, {"model": MODEL, "messages": MESSAGES}, key=None), 401)
    assert_openai_error(post(stack, {"model": MODEL, "messages": MESSAGES}, key="sk-spot-wrong"), 401)
    with pytest.raises(openai.AuthenticationError):
        chat(stack.via("sk-spot-wrong"))
    with pytest.raises(openai.AuthenticationError):
        stack.via("sk-spot-wrong").models.list()


def test_unknown_model_is_404_listing_the_known_ones(stack: Stack) -> None:
    error = assert_openai_error(post(stack, {"model": "gpt-9", "messages": MESSAGES}), 404)
    assert MODEL in error["message"] and error["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        chat(stack.via(), model="gpt-9")
    # Clients choose model names: unknown ones share one metrics label instead of adding series.
    metrics = httpx.get(f"{stack.gateway_url}/metrics", headers=operator_headers(stack.home), timeout=10).text
    assert 'spot_requests_total{model="(unknown)",status="404"}' in metrics
    assert "gpt-9" not in metrics


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        ({"messages": MESSAGES}, "model"),
        ({"model": 7, "messages": MESSAGES}, "model"),
        ({"model": MODEL}, "messages"),
        ({"model": MODEL, "messages": "hello"}, "messages"),
        ({"model": MODEL, "messages": MESSAGES, "stream": "yes"}, "stream"),
        ({"model": MODEL, "messages": MESSAGES, "stream": True, "stream_options": []}, "stream_options"),
        ({"model": MODEL, "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
    ],
)
def test_malformed_requests_are_400(stack: Stack, body: bytes | dict, param: str | None) -> None:
    error = assert_openai_error(post(stack, body), 400)
    assert error["param"] == param


def test_oversized_body_is_413(stack: Stack) -> None:
    huge = {"model": MODEL, "messages": [{"role": "user", "content": "x" * (5 * 1024 * 1024)}]}
    assert_openai_error(post(stack, huge), 413)


def test_engine_errors_pass_through_with_their_status(stack: Stack) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": -1}
    direct = httpx.post(f"{stack.engine_url}/v1/chat/completions", json=body, timeout=30)
    via = post(stack, body)
    assert via.status_code == direct.status_code == 400
    assert via.json() == direct.json()
    with pytest.raises(openai.BadRequestError):
        chat(stack.via(), max_tokens=100_000)


def test_revoking_a_key_takes_effect_within_a_second(stack: Stack) -> None:
    store = Store(stack.home)
    temporary = create_key(store, f"temp-{time.monotonic_ns()}")
    deadline = time.monotonic() + 5
    while post(stack, {"model": MODEL, "messages": MESSAGES, "max_tokens": 2}, key=temporary.key).status_code == 401:
        assert time.monotonic() < deadline, "a new key was not accepted"
        time.sleep(0.05)
    from spotinference.keys import revoke_key

    revoke_key(store, temporary.name)
    revoked_at = time.monotonic()
    while post(stack, {"model": MODEL, "messages": MESSAGES, "max_tokens": 2}, key=temporary.key).status_code != 401:
        assert time.monotonic() - revoked_at < 5, "the revoked key still works"
        time.sleep(0.05)


def test_health_and_metrics(stack: Stack) -> None:
    health = httpx.get(f"{stack.gateway_url}/health", headers=operator_headers(stack.home), timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    chat(stack.via())
    list(chat(stack.via(), stream=True))  # time to first token is measured on streams
    text = httpx.get(f"{stack.gateway_url}/metrics", headers=operator_headers(stack.home), timeout=10).text
    for name in ("spot_requests_total", "spot_prompt_tokens_total", "spot_completion_tokens_total",
                 "spot_requests_in_flight", "spot_upstream_latency_seconds_bucket", "spot_time_to_first_token_seconds_bucket"):
        assert name in text
    assert f'spot_requests_total{{model="{MODEL}",status="200"}}' in text


def _in_flight(stack: Stack) -> float:
    text = httpx.get(f"{stack.gateway_url}/metrics", headers=operator_headers(stack.home), timeout=10).text
    found = re.search(rf'^spot_requests_in_flight{{model="{MODEL}"}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_in_flight_counts_open_streams_and_returns_to_zero(stack: Stack) -> None:
    assert _in_flight(stack) == 0
    chat(stack.via())
    list(chat(stack.via(), stream=True))
    assert _in_flight(stack) == 0, "finished requests are still counted in flight"
    stream = stack.via().chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=400, stream=True, extra_body={"ignore_eos": True})
    next(iter(stream))
    if stack.engine == "sim":
        # The simulator paces its tokens; real vLLM on the CPU may have sent all 400 before
        # /metrics answers, which ends the request whether or not this client reads them.
        assert _in_flight(stack) == 1
    stream.close()  # the client leaves: the relay cancels upstream and the request is over
    deadline = time.monotonic() + 5
    while _in_flight(stack) != 0:
        assert time.monotonic() < deadline, f"in-flight gauge stuck at {_in_flight(stack)}"
        time.sleep(0.05)
