"""The gateway in front of a hostile engine, seen from the client's side.

One gateway (small upstream timeouts) in front of one ``tests/hostile_engine.py`` for the whole
module. Every answer the engine writes carries the gateway's request id in its ``id``
(``cmpl-<X-Request-Id>``), so a client can tell whether the answer it got was made for its own
request: the check that one client's answer never reaches another.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.hostile_engine import start_hostile_engine
from tests.servers import ServerProcess, dechunk, start_gateway
from tests.token_log import logged_rows

READ_TIMEOUT_S = 1.0
TOTAL_TIMEOUT_S = 4.0
MESSAGES = [{"role": "user", "content": "three word prompt"}]


class Setup:
    def __init__(self, home: Path, url: str, engine_url: str) -> None:
        self.home, self.url, self.engine_url = home, url, engine_url
        self.patient_url = ""  # a second gateway on the same engine with the default timeouts

    def post(self, body: dict, timeout_s: float = 30) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/chat/completions", json=body, timeout=timeout_s)

    def engine_stats(self) -> dict:
        return httpx.get(f"{self.engine_url}/stats", timeout=10).json()["requests"]

    def sdk(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("hostile")
    engine, engine_url = start_hostile_engine(tmp)
    home = tmp / "gw"
    models = {"tiny": engine_url}
    gateway: ServerProcess | None = None
    try:
        gateway, url = start_gateway(home, models, extra_env={
            "SPOT_GATEWAY__REQUIRE_KEYS": "false",
            "SPOT_GATEWAY__UPSTREAM_READ_TIMEOUT_S": str(READ_TIMEOUT_S),
            "SPOT_GATEWAY__UPSTREAM_TOTAL_TIMEOUT_S": str(TOTAL_TIMEOUT_S),
        })
        # The back-pressure test streams for as long as its client reads slowly: behind the small
        # total timeout above that is a race with the machine's load, not a test of cross-talk.
        patient, patient_url = start_gateway(tmp / "patient", models, extra_env={
            "SPOT_GATEWAY__REQUIRE_KEYS": "false"})
        try:
            setup = Setup(home, url, engine_url)
            setup.patient_url = patient_url
            yield setup
        finally:
            patient.stop()
    finally:
        if gateway is not None:
            gateway.stop()
        engine.stop()


def body(mode: str = "normal", *, max_tokens: int = 8, stream: bool = False) -> dict:
    return {"model": "tiny", "messages": MESSAGES, "max_tokens": max_tokens, "stream": stream, "misbehave": mode}


def assert_own_answer(response: httpx.Response, max_tokens: int) -> None:
    """The answer was made for this request (its id) and is whole (its token count)."""
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["id"] == "cmpl-" + response.headers["x-request-id"], "another request's answer"
    assert data["choices"][0]["message"]["content"] == " ".join(["tok"] * max_tokens)


def test_interim_responses_are_skipped_and_the_next_client_gets_its_own_answer(setup: Setup) -> None:
    for round_ in range(3):
        first = setup.post(body("interim", max_tokens=3 + round_))
        assert_own_answer(first, 3 + round_)
        second = setup.post(body("normal", max_tokens=5))
        assert_own_answer(second, 5)
    # The same through the SDK, streamed.
    stream = setup.sdk().chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4, stream=True,
                                                 extra_body={"misbehave": "interim"})
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "tok " * 4
    after = setup.post(body("normal", max_tokens=2))
    assert_own_answer(after, 2)


def test_an_unsolicited_extra_response_is_never_delivered_to_the_next_request(setup: Setup) -> None:
    for mode in ("stray", "stray:100"):
        for _ in range(3):
            first = setup.post(body(mode, max_tokens=3))
            assert_own_answer(first, 3)
            if mode != "stray":
                time.sleep(0.3)  # the stray answer arrives while the connection is idle
            second = setup.post(body("normal", max_tokens=6))
            assert b"stray" not in second.content
            assert_own_answer(second, 6)


def test_a_silent_engine_is_a_504_after_the_read_timeout_with_a_row(setup: Setup) -> None:
    started = time.monotonic()
    response = setup.post(body("silence"))
    waited_s = time.monotonic() - started
    assert response.status_code == 504, response.text
    assert response.json()["error"]["code"] == "engine_timeout"
    assert waited_s < TOTAL_TIMEOUT_S  # the read timeout fired, not the total one
    (row,) = logged_rows(setup.home, {response.headers["x-request-id"]}, timeout_s=10)
    assert row["http_status"] == 504 and row["error"]
    # Streamed: no byte of an answer came, so it is a 504 too.
    response = setup.post(body("silence", stream=True))
    assert response.status_code == 504 and response.json()["error"]["code"] == "engine_timeout"


def test_an_engine_stalling_mid_stream_ends_the_stream_with_a_timeout_event_and_a_row(setup: Setup) -> None:
    stream = setup.sdk().chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, stream=True,
                                                 extra_body={"misbehave": "stall"})
    request_id = stream.response.headers["x-request-id"]
    received = []
    with pytest.raises(openai.APIError, match="timed out|timeout"):
        for chunk in stream:
            received.append(chunk)
    assert received, "the events sent before the stall were not delivered"
    (row,) = logged_rows(setup.home, {request_id}, timeout_s=10)
    assert row["http_status"] == 504 and row["completion_tokens"] == 1
    assert row["completion_tokens"] <= setup.engine_stats()[request_id]["completion_tokens"]


def test_an_engine_dripping_bytes_is_cut_by_the_total_timeout(setup: Setup) -> None:
    started = time.monotonic()
    response = setup.post(body("slow_drip:50"), timeout_s=60)
    assert response.status_code == 504, response.text
    assert TOTAL_TIMEOUT_S <= time.monotonic() - started < TOTAL_TIMEOUT_S + 10
    assert "total" in response.json()["error"]["message"]


def test_a_gzip_answer_reaches_the_client_decoded_and_its_tokens_are_counted(setup: Setup) -> None:
    response = setup.post(body("gzip", max_tokens=7))
    assert_own_answer(response, 7)
    assert "content-encoding" not in response.headers
    stream = setup.sdk().chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=5, stream=True,
                                                 extra_body={"misbehave": "gzip"})
    stream_id = stream.response.headers["x-request-id"]
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "tok " * 5
    engine = setup.engine_stats()
    rows = {r["request_id"]: r for r in logged_rows(setup.home, {response.headers["x-request-id"], stream_id},
                                                     expect=2, timeout_s=10)}
    for request_id in (response.headers["x-request-id"], stream_id):
        row = rows[request_id]
        assert row["http_status"] == 200
        assert row["prompt_tokens"] == engine[request_id]["prompt_tokens"] == 3
        assert row["completion_tokens"] == engine[request_id]["completion_tokens"]


def test_a_slow_reader_and_a_second_client_never_see_each_others_bytes(setup: Setup) -> None:
    # A client that does not read a long stream (back-pressure all the way to the engine) while
    # other requests run on the same gateway and engine; afterwards each has only its own bytes.
    tokens = 20_000
    payload = json.dumps(body("normal", max_tokens=tokens, stream=True)).encode()
    # The patient gateway: its total timeout is the default, so only cross-talk can fail this.
    slow = socket.create_connection(("127.0.0.1", int(setup.patient_url.rsplit(":", 1)[1])), timeout=60)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
    errors: list[str] = []

    def others() -> None:
        for i in range(6):  # through the same gateway and its pool of engine connections
            response = httpx.post(f"{setup.patient_url}/v1/chat/completions",
                                  json=body("normal", max_tokens=3 + i), timeout=30)
            try:
                assert_own_answer(response, 3 + i)
            except AssertionError as exc:
                errors.append(str(exc))

    thread = threading.Thread(target=others)
    thread.start()
    time.sleep(1.0)
    raw = bytearray()
    while not raw.endswith(b"\r\n0\r\n\r\n"):
        piece = slow.recv(1 << 16)
        assert piece, "the gateway closed the slow client's stream early"
        raw += piece
    slow.close()
    thread.join(60)
    assert not errors, errors
    head, _, chunked = bytes(raw).partition(b"\r\n\r\n")
    request_id = next(line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
                      if line.lower().startswith(b"x-request-id:"))
    events = [e for e in dechunk(chunked).split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    ids = {json.loads(e[6:])["id"] for e in events[:-1]}
    assert ids == {"cmpl-" + request_id}
    text = "".join(json.loads(e[6:])["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert text == "tok " * tokens


@pytest.mark.parametrize("mode", ["bad_chunk", "close_mid_chunk", "reset"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_broken_framing_is_a_502_or_an_error_event_with_a_row_and_the_gateway_still_serves(
        setup: Setup, mode: str, stream: bool) -> None:
    if stream:
        response = setup.sdk().chat.completions.with_raw_response.create(
            model="tiny", messages=MESSAGES, max_tokens=8, stream=True, extra_body={"misbehave": mode})
        request_id = response.headers["x-request-id"]
        with pytest.raises(openai.APIError, match="mid-stream"):
            for _ in response.parse():
                pass
    else:
        answer = setup.post(body(mode))
        request_id = answer.headers["x-request-id"]
        assert answer.status_code == 502, answer.text
        assert answer.json()["error"]["code"] == "engine_error"
    (row,) = logged_rows(setup.home, {request_id}, timeout_s=10)
    assert row["http_status"] == 502 and row["error"]
    # Never more than the engine generated; unknown (NULL) where no usage arrived, never a made-up 0.
    logged = row["completion_tokens"]
    assert logged is None or logged <= setup.engine_stats()[request_id]["completion_tokens"]
    assert_own_answer(setup.post(body("normal", max_tokens=4)), 4)


def test_a_slow_but_live_engine_is_not_cut_by_the_read_timeout(setup: Setup) -> None:
    response = setup.post(body("slow_drip:3", max_tokens=2))  # a byte every 3 ms, ~1 s in all
    assert_own_answer(response, 2)


def test_finished_requests_are_logged_with_exactly_the_engines_token_counts(setup: Setup) -> None:
    ids = []
    for mode in ("normal", "interim", "stray", "gzip", "slow_drip:1"):
        for stream in (False, True):
            response = setup.post(body(mode, max_tokens=5, stream=stream))
            assert response.status_code == 200, (mode, stream, response.text)
            ids.append(response.headers["x-request-id"])
    rows = logged_rows(setup.home, set(ids), expect=len(ids), timeout_s=15)
    engine = setup.engine_stats()
    assert len(rows) == len(ids)
    for row in rows:
        counted = engine[row["request_id"]]
        assert counted["finished"]
        assert (row["prompt_tokens"], row["completion_tokens"]) == (counted["prompt_tokens"], counted["completion_tokens"])
