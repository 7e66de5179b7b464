"""Every token counted, from the user's side: aborted streams with n > 1 or several prompts,
aborts before the first chunk, and the log reconciled with the engine's own counters.

Through a real `spot serve` over HTTP, against `spot sim engine` (which counts like vLLM) and
against a stand-in engine whose every written usage is known (tests/stand_in_engine.py).
"""

from __future__ import annotations

import json
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spotinference.gateway.reconcile import engine_tokens, reconcile
from spotinference.keys import create_key
from spotinference.store import Store
from tests.conftest import run_spot
from tests.servers import start_gateway, start_sim_engine
from tests.stand_in_engine import StandInEngine
from tests.token_log import logged_rows

MODEL = "tiny-chat"


@pytest.fixture(scope="module")
def sim_stack(tmp_path_factory: pytest.TempPathFactory):
    """A gateway in front of a sim engine slow enough (40 ms a step) to leave mid-stream."""
    work = tmp_path_factory.mktemp("accounting")
    engine, engine_url = start_sim_engine(work, extra=["--itl-ms", "40", "--max-model-len", "4096"])
    home = work / "gw"
    key = create_key(Store(home), "k").key
    gateway, url = start_gateway(home, {MODEL: engine_url})
    yield engine_url, url, key, home
    gateway.stop()
    engine.stop()


def counters(engine_url: str):
    deadline = time.monotonic() + 20
    while True:  # the engine counts an aborted request's last tokens when it notices the close
        text = httpx.get(f"{engine_url}/metrics", timeout=10).text
        running = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                      if line.startswith("vllm:num_requests_running{"))
        if running == 0 or time.monotonic() > deadline:
            return engine_tokens(text, MODEL)
        time.sleep(0.05)


def leave_after(stream, chunks: int) -> dict[int, int]:
    """Read ``chunks`` chunks of an SDK stream, then hang up; each choice's last running total seen."""
    seen: dict[int, int] = {}
    for i, chunk in enumerate(stream):
        for choice in chunk.choices:
            if chunk.usage is not None:
                seen[choice.index] = chunk.usage.completion_tokens
        if i + 1 == chunks:
            break
    stream.close()
    return seen


def test_an_aborted_n8_stream_is_billed_every_choice(sim_stack) -> None:
    engine_url, url, key, home = sim_stack
    before = counters(engine_url)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello there"}], n=8, max_tokens=300, stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True}, extra_body={"ignore_eos": True})
    request_id = stream.response.headers["x-request-id"]
    seen = leave_after(stream, 8 * 6)  # the role chunks and about five tokens of each choice
    after = counters(engine_url)
    (row,) = logged_rows(home, {request_id})
    generated = after.generation_tokens - before.generation_tokens
    assert len(seen) == 8 and row["client_aborted"] is True and row["http_status"] == 499
    # At least what the client saw of each choice (the gateway may have read a little further),
    # never more than the engine made; the engine may run about one step (8 tokens) past the
    # last chunk the gateway read before it notices the close.
    assert sum(seen.values()) <= row["completion_tokens"] <= generated
    assert generated - row["completion_tokens"] <= 16
    # The prompt counts once in usage; vLLM's counter prefills it once per choice.
    assert row["prompt_tokens"] * 8 == after.prompt_tokens - before.prompt_tokens


def test_an_aborted_stream_of_several_prompts_is_billed_every_prompt(sim_stack) -> None:
    engine_url, url, key, home = sim_stack
    before = counters(engine_url)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    prompts = ["the first prompt", "a second, longer prompt than the first", "third"]
    stream = client.completions.create(model=MODEL, prompt=prompts, n=2, max_tokens=300, stream=True,
                                       extra_body={"ignore_eos": True})  # no usage asked for: the gateway asks
    request_id = stream.response.headers["x-request-id"]
    indexes = set()
    for i, chunk in enumerate(stream):
        indexes.update(c.index for c in chunk.choices)
        if i + 1 == 6 * 5:
            break
    stream.close()
    after = counters(engine_url)
    (row,) = logged_rows(home, {request_id})
    generated = after.generation_tokens - before.generation_tokens
    assert indexes == set(range(6))  # choice = prompt_index * n + i
    assert 30 <= row["completion_tokens"] <= generated and generated - row["completion_tokens"] <= 12
    assert row["prompt_tokens"] * 2 == after.prompt_tokens - before.prompt_tokens  # each prompt once, n=2


def test_a_stream_aborted_before_its_first_chunk_has_unknown_prompt_tokens(tmp_path: Path) -> None:
    engine, engine_url = start_sim_engine(tmp_path, extra=["--ttft-ms", "3000"])
    home = tmp_path / "gw"
    key = create_key(Store(home), "k").key
    gateway, url = start_gateway(home, {MODEL: engine_url})
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
        stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=5, stream=True)
        request_id = stream.response.headers["x-request-id"]
        stream.close()  # the headers came; no chunk yet
        logged_rows(home, {request_id})
        result = run_spot("requests", "--json", env={"SPOT_HOME": str(home)})
        assert result.returncode == 0, result.stderr
        (row,) = [r for r in json.loads(result.stdout) if r["id"] == request_id]
        assert row["prompt_tokens"] is None and row["aborted"] is True and row["status"] == 499
        table = run_spot("requests", env={"SPOT_HOME": str(home)})
        assert "unknown" in table.stdout
        # One finished request too, then the log against the engine's own counters.
        done = client.completions.with_raw_response.create(model=MODEL, prompt="one two", max_tokens=4)
        logged_rows(home, {done.headers["x-request-id"]})
        result = run_spot("requests", "--json", "--reconcile", engine_url, env={"SPOT_HOME": str(home)})
        assert result.returncode == 0, result.stderr
        (line,) = json.loads(result.stdout)["reconciliation"]
        assert line["model"] == MODEL and line["requests"] == 2 and line["unknown_prompt_rows"] == 1
        assert line["logged_completion_tokens"] == 4 and line["unlogged_generation_tokens"] == 0
        table = run_spot("requests", "--reconcile", engine_url, env={"SPOT_HOME": str(home)})
        assert "1 with unknown prompt tokens" in table.stdout
    finally:
        gateway.stop()
        engine.stop()


def test_the_log_reconciles_with_the_engines_counters(sim_stack) -> None:
    engine_url, url, key, home = sim_stack
    before, since = counters(engine_url), datetime.now(UTC)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    ids = []
    for n in (1, 3):
        raw = client.completions.with_raw_response.create(model=MODEL, prompt="count me", max_tokens=7, n=n)
        ids.append(raw.headers["x-request-id"])
        stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                                max_tokens=6, n=n, stream=True)
        for _ in stream:
            pass
        ids.append(stream.response.headers["x-request-id"])
    after = counters(engine_url)
    logged_rows(home, set(ids), expect=len(ids))
    result = reconcile(Store(home), before, after, model=MODEL, since=since, until=datetime.now(UTC))
    assert result.requests == 4 and result.unknown_prompt_rows == 0
    assert result.unlogged_generation_tokens == 0 and not result.overlogged  # all finished: exact
    assert result.logged_completion_tokens == 7 + 6 + 3 * 7 + 3 * 6
    assert result.engine_prompt_tokens > result.logged_prompt_tokens  # n=3 prefills count thrice
    assert "unlogged" in result.line()


# -- the truth known exactly: a stand-in engine and random aborts -------------------------------------

@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("stand-in-gw")
    key = create_key(Store(home), "k").key
    with StandInEngine() as engine:
        gateway, url = start_gateway(home, {"script": engine.url})
        try:
            yield engine, url, key, home
        finally:
            gateway.stop()


def read_events_then_leave(url: str, key: str, body: dict, events: int) -> str:
    """Read ``events`` SSE events (all of them if fewer come) over a raw socket, then close."""
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                     + f"Authorization: Bearer {key}\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload)
        received = b""
        while b"\r\n\r\n" not in received or received.count(b"data: ") < events:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    head = received.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    assert head.startswith("HTTP/1.1 200"), head
    return next(line.split(":", 1)[1].strip() for line in head.split("\r\n") if line.lower().startswith("x-request-id:"))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(n=st.integers(1, 4), prompts=st.lists(st.sampled_from(["a", "b c", "d e f", "g h i j"]), min_size=1, max_size=3),
       max_tokens=st.integers(1, 5), merge=st.booleans(), continuous=st.booleans(), seed=st.integers(0, 1000),
       leave_at=st.floats(0, 1.2))
def test_an_aborted_stream_logs_exactly_what_the_engine_sent(stand_in, n: int, prompts: list[str], max_tokens: int,
                                                             merge: bool, continuous: bool, seed: int,
                                                             leave_at: float) -> None:
    engine, url, key, home = stand_in
    choices = n * len(prompts)
    total_events = choices * max_tokens + 2  # at most: one token a chunk, the usage chunk, [DONE]
    stall_after = int(leave_at * total_events)
    body = {"model": "script", "prompt": prompts, "n": n, "max_tokens": max_tokens, "merge": merge, "seed": seed,
            "stream": True, "stall_after": stall_after,
            "stream_options": {"include_usage": True, "continuous_usage_stats": continuous}}
    request_id = read_events_then_leave(url, key, body, stall_after)
    served = engine.served[request_id]
    assert served.closed.wait(10)
    (row,) = logged_rows(home, {request_id})
    if served.finished:
        assert (row["prompt_tokens"], row["completion_tokens"]) == (sum(served.prompt_tokens), choices * max_tokens)
        assert row["http_status"] == 200
        return
    assert row["client_aborted"] is True
    assert row["completion_tokens"] == (served.completion_tokens_sent() if served.running else None)
    assert row["prompt_tokens"] == (served.prompt_tokens_seen() if served.running else None)


def test_a_non_streamed_request_whose_client_left_logs_unknown_tokens(sim_stack) -> None:
    # vLLM sends usage only with the whole answer; aborting the request (to free the GPU) loses
    # it, so the row cannot know the tokens. Unknown, never 0.
    engine_url, url, key, home = sim_stack
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 300,
                          "ignore_eos": True}).encode()
    before = datetime.now(UTC)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                     + f"Authorization: Bearer {key}\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload)
        time.sleep(0.5)
    rows = []
    deadline = time.monotonic() + 15
    while not rows and time.monotonic() < deadline:
        rows = [r for r in logged_rows(home, expect=0) if r["started_at"] >= before and not r["streamed"]]
    (row,) = rows
    assert row["client_aborted"] is True and row["http_status"] == 499
    assert row["prompt_tokens"] is None and row["completion_tokens"] is None


# -- against REAL vLLM: the log equals vLLM's own counters, finished and aborted, any n ----------------

@pytest.fixture(scope="module")
def vllm_stack(vllm_engine: str, tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("accounting-vllm")
    key = create_key(Store(home), "k").key
    gateway, url = start_gateway(home, {MODEL: vllm_engine})
    yield vllm_engine, url, key, home
    gateway.stop()


PROMPTS = {"chat": None, "one prompt": "one prompt to complete", "two prompts": ["the first prompt", "a second, longer one"]}


def open_stream(client: openai.OpenAI, endpoint: str, n: int | str | float, max_tokens: int, **options):
    """A streamed request of ``n`` choices per prompt (vLLM reads "2" and 2.0 as 2): chat, or
    completions of one or two prompts. Returns the stream and its number of prompts."""
    if endpoint == "chat":
        return client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "count the tokens of this"}], n=n,  # type: ignore[arg-type]
            max_tokens=max_tokens, stream=True, extra_body={"ignore_eos": True}, **options), 1
    prompt = PROMPTS[endpoint]
    return client.completions.create(
        model=MODEL, prompt=prompt, n=n, max_tokens=max_tokens,  # type: ignore[arg-type]
        stream=True, extra_body={"ignore_eos": True}, **options), 1 if isinstance(prompt, str) else len(prompt)


@pytest.mark.slow
@pytest.mark.parametrize("endpoint", ["chat", "one prompt", "two prompts"])
@pytest.mark.parametrize("n", [1, 3, "2"])
def test_real_vllm_finished_streams_log_exactly_what_vllm_counted(vllm_stack, endpoint: str, n) -> None:
    engine_url, url, key, home = vllm_stack
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    before = counters(engine_url)
    stream, prompts = open_stream(client, endpoint, n, 9)  # no usage asked for: the gateway asks vLLM
    chunks = list(stream)
    n = int(n)
    request_id = stream.response.headers["x-request-id"]
    assert all(chunk.usage is None for chunk in chunks)  # what the client did not ask for stays out
    after = counters(engine_url)
    (row,) = logged_rows(home, {request_id})
    assert row["http_status"] == 200 and row["client_aborted"] is False
    assert row["completion_tokens"] == 9 * n * prompts == after.generation_tokens - before.generation_tokens
    # vLLM's usage counts each prompt once; its counter prefills each prompt once per choice.
    assert row["prompt_tokens"] * n == after.prompt_tokens - before.prompt_tokens


@pytest.mark.slow
@pytest.mark.parametrize("endpoint", ["chat", "one prompt", "two prompts"])
@pytest.mark.parametrize("n", [1, 3, "2", 2.0])
def test_real_vllm_aborted_streams_log_within_vllms_counters(vllm_stack, endpoint: str, n) -> None:
    engine_url, url, key, home = vllm_stack
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    before = counters(engine_url)
    stream, prompts = open_stream(client, endpoint, n, 400,
                                  stream_options={"include_usage": True, "continuous_usage_stats": True})
    request_id = stream.response.headers["x-request-id"]
    n = int(n)
    choices = n * prompts
    seen = leave_after(stream, choices * 6)  # the role chunks and a few tokens of every choice
    after = counters(engine_url)
    (row,) = logged_rows(home, {request_id})
    generated = after.generation_tokens - before.generation_tokens
    assert len(seen) == choices and row["client_aborted"] is True and row["http_status"] == 499
    # At least what the client saw of each choice, never more than vLLM made (it runs on a few
    # steps before it notices the close), and the request did stop early.
    assert sum(seen.values()) <= row["completion_tokens"] <= generated < 400 * choices
    assert row["prompt_tokens"] * n == after.prompt_tokens - before.prompt_tokens
