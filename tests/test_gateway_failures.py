"""The gateway when things go wrong: dead engines, killed gateways, hostile input."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spotinference.keys import create_key
from spotinference.store import Store
from tests.conftest import run_spot
from tests.servers import dechunk, free_port, start_gateway, start_sim_engine
from tests.token_log import logged_rows

MODEL = "tiny-chat"
MESSAGES = [{"role": "user", "content": "hello"}]


def test_an_unreachable_engine_is_503_with_retry_after(tmp_path: Path) -> None:
    home = tmp_path / "gw"
    key = create_key(Store(home), "k").key
    gateway, url = start_gateway(home, {MODEL: f"http://127.0.0.1:{free_port()}"})
    try:
        response = httpx.post(f"{url}/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES},
                              headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert response.status_code == 503
        assert int(response.headers["retry-after"]) > 0
        assert response.json()["error"]["code"] == "engine_unreachable"
        (row,) = logged_rows(home, {response.headers["x-request-id"]}, timeout_s=10)
        assert row["http_status"] == 503 and row["completion_tokens"] == 0
    finally:
        gateway.stop()


def test_an_engine_dying_mid_stream_ends_the_stream_with_an_error_and_logs_what_was_served(tmp_path: Path) -> None:
    engine, engine_url = start_sim_engine(tmp_path, extra=["--itl-ms", "20"])
    home = tmp_path / "gw"
    key = create_key(Store(home), "k").key
    gateway, url = start_gateway(home, {MODEL: engine_url})
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
        stream = client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=300, stream=True, extra_body={"ignore_eos": True}
        )
        request_id = stream.response.headers["x-request-id"]
        received = 0
        with pytest.raises(openai.APIError, match="mid-stream"):
            for _ in stream:
                received += 1
                if received == 5:
                    engine.kill9()
        (row,) = logged_rows(home, {request_id}, timeout_s=10)
        assert row["http_status"] == 502 and row["client_aborted"] is False
        assert 3 <= row["completion_tokens"] < 300
        assert row["prompt_tokens"] > 0
    finally:
        gateway.stop()
        engine.stop()


def test_a_client_that_stops_reading_still_gets_every_chunk_in_order_and_the_row_counts_them(tmp_path: Path) -> None:
    # A reader slower than the engine: the gateway must hold the engine back (back-pressure),
    # not drop, reorder or duplicate chunks, and still count what was served.
    # ~6 MB of events at once: more than the sockets' buffers hold (Linux grows a loopback send
    # buffer to 4 MB), so the gateway's sends to this client do block.
    tokens = 24_000
    engine, sim_engine = start_sim_engine(tmp_path, extra=["--ttft-ms", "0", "--itl-ms", "0",
                                                           "--max-model-len", str(tokens + 100)])
    home = tmp_path / "gw"
    key = create_key(Store(home), "k").key
    gateway, url = start_gateway(home, {MODEL: sim_engine})
    try:
        body = json.dumps({"model": MODEL, "messages": MESSAGES, "max_tokens": tokens, "stream": True,
                           "ignore_eos": True, "stream_options": {"include_usage": True}}).encode()
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        client.settimeout(30)
        client.connect(("127.0.0.1", int(url.rsplit(":", 1)[1])))
        client.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer %s\r\n"
                       b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (key.encode(), len(body), body))
        time.sleep(1.5)  # not reading while the engine streams at full speed
        raw = bytearray()
        while not raw.endswith(b"\r\n0\r\n\r\n"):
            piece = client.recv(1 << 16)
            assert piece, "the gateway closed the stream early"
            raw += piece
        client.close()
        head, _, chunked = bytes(raw).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        request_id = next(line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
                          if line.lower().startswith(b"x-request-id:"))
        events = [e for e in dechunk(chunked).split(b"\n\n") if e]
        assert events[-1] == b"data: [DONE]"
        chunks = [json.loads(e[6:]) for e in events[:-1]]
        usage = chunks[-1]["usage"]
        assert usage["completion_tokens"] == tokens
        content = [c["choices"][0]["delta"].get("content") for c in chunks[:-1] if c["choices"]]
        assert sum(1 for text in content if text) == tokens, "chunks lost or repeated"
        # The simulator's text is deterministic: the same request read at once gives the same text.
        direct = httpx.post(f"{sim_engine}/v1/chat/completions", json=json.loads(body), timeout=60)
        direct_text = "".join(json.loads(e[6:])["choices"][0]["delta"].get("content") or ""
                              for e in direct.content.split(b"\n\n") if e.startswith(b"data: {") and b'"choices":[{' in e)
        assert "".join(text or "" for text in content) == direct_text, "chunks reordered"
        (row,) = logged_rows(home, {request_id}, timeout_s=10)
        assert row["completion_tokens"] == tokens and row["http_status"] == 200 and row["client_aborted"] is False
    finally:
        gateway.stop()
        engine.stop()


def test_a_row_survives_a_kill_9_right_after_the_response(tmp_path: Path, sim_engine: str) -> None:
    home = tmp_path / "gw"
    key = create_key(Store(home), "k").key
    gateway, url = start_gateway(home, {MODEL: sim_engine})
    response = httpx.post(f"{url}/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES, "max_tokens": 5},
                          headers={"Authorization": f"Bearer {key}"}, timeout=30)
    gateway.kill9()
    assert response.status_code == 200
    (row,) = logged_rows(home, {response.headers["x-request-id"]}, timeout_s=10)
    assert row["completion_tokens"] == response.json()["usage"]["completion_tokens"]


def test_keys_off_must_be_explicit_and_serve_warns(tmp_path: Path, sim_engine: str) -> None:
    home = tmp_path / "gw"
    gateway, url = start_gateway(home, {MODEL: sim_engine}, extra_env={"SPOT_GATEWAY__REQUIRE_KEYS": "false"})
    try:
        response = httpx.post(f"{url}/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES, "max_tokens": 3}, timeout=30)
        assert response.status_code == 200
    finally:
        gateway.stop()
    assert "WARNING: API keys are OFF" in gateway.log_tail()


def test_a_bad_upstream_flag_is_a_one_line_error() -> None:
    result = run_spot("serve", "--upstream", "tiny-chat")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: --upstream 'tiny-chat' is invalid: expected MODEL=URL, e.g. tiny-chat=http://127.0.0.1:8001"
    )


# -- fuzz: whatever a client sends, the gateway never answers 500 -------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
field_values = {
    "model": st.sampled_from([MODEL, "other", ""]) | json_values,
    "messages": st.just(MESSAGES) | st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "bogus"]), "content": json_values}), max_size=3) | json_values,
    "prompt": st.text(max_size=30) | json_values,
    "max_tokens": st.integers(-5, 1000) | json_values,
    "stream": st.booleans() | json_values,
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": json_values, "continuous_usage_stats": json_values}) | json_values,
    "temperature": st.floats(-1, 3) | json_values,
    "n": st.integers(-1, 3),
    "ignore_eos": st.booleans(),
}
request_bodies = st.fixed_dictionaries({}, optional=field_values) | json_values


@pytest.fixture(scope="module")
def fuzz_gateway(tmp_path_factory: pytest.TempPathFactory, sim_engine: str):
    home = tmp_path_factory.mktemp("fuzz-gw")
    key = create_key(Store(home), "fuzz").key
    gateway, url = start_gateway(home, {MODEL: sim_engine})
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        yield client
    gateway.stop()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=request_bodies, path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]))
def test_fuzzed_requests_never_get_a_500(fuzz_gateway: httpx.Client, body: object, path: str) -> None:
    if isinstance(body, dict) and body.get("max_tokens") and isinstance(body["max_tokens"], int) and body["max_tokens"] > 64:
        body["max_tokens"] = 64  # keep each example quick; the size itself is not what is fuzzed
    response = fuzz_gateway.post(path, content=json.dumps(body).encode())
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert error["message"] and "type" in error
