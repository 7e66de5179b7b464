"""An engine that breaks the rules, seen from the client: never a bare 500, always a row.

Each engine-side fault must reach the client as an OpenAI-shaped 502 (not streamed) or as an
error event that ends the stream (streamed), leave a row that says what went wrong, count in
``spot_request_failures``, and leave the gateway serving the next request.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest

from spotinference.keys import create_key
from spotinference.store import Store
from tests.servers import operator_headers, start_gateway
from tests.stand_in_engine import StandInEngine
from tests.token_log import logged_rows

FAULTY = ["usage-overflow", "usage-negative", "usage-string", "non-utf8", "status-299", "status-302", "status-600",
          "status-999"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("faults-gw")
    key = create_key(Store(home), "k").key
    with StandInEngine() as engine:
        models = {m: engine.url for m in ["script", "no-usage", "huge", *FAULTY]}
        server, url = start_gateway(home, models, extra_env={"SPOT_GATEWAY__MAX_RESPONSE_BODY_BYTES": str(3 << 20)})
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        try:
            yield client, home, key
        finally:
            client.close()
            server.stop()


def still_serving(client: httpx.Client) -> None:
    response = client.post("/v1/completions", json={"model": "script", "prompt": "a b", "max_tokens": 3})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 3


def failures(client: httpx.Client, home: Path) -> dict[str, float]:
    # /metrics is the gateway's own Prometheus text (the operator's); the failure counter is by side.
    text = client.get("/metrics", headers=operator_headers(home)).text
    return {line.split('"')[1]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("spot_request_failures_total{")}


@pytest.mark.parametrize("model", FAULTY)
def test_a_faulty_non_streamed_answer_is_a_502_with_a_row(gateway, model: str) -> None:
    client, home, _ = gateway
    before = failures(client, home).get("engine", 0.0)
    response = client.post("/v1/completions", json={"model": model, "prompt": "a b c", "max_tokens": 4})
    assert response.status_code == 502, (response.status_code, response.text[:300])
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == "engine_error" and error["message"]
    (row,) = logged_rows(home, {response.headers["x-request-id"]})
    assert row["http_status"] == 502 and row["error"]
    assert failures(client, home)["engine"] == before + 1
    still_serving(client)


@pytest.mark.parametrize("model", [m for m in FAULTY if not m.startswith("status-")])
def test_a_faulty_stream_ends_with_an_error_event_and_a_row(gateway, model: str) -> None:
    client, home, key = gateway
    sdk = openai.OpenAI(base_url=str(client.base_url.join("/v1")), api_key=key, max_retries=0)
    stream = sdk.completions.create(model=model, prompt="a b c", max_tokens=4, stream=True)
    request_id = stream.response.headers["x-request-id"]
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass
    (row,) = logged_rows(home, {request_id})
    assert row["http_status"] == 502 and row["error"], row
    still_serving(client)


@pytest.mark.parametrize("model", [m for m in FAULTY if m.startswith("status-")])
def test_an_odd_status_to_a_stream_request_is_a_502(gateway, model: str) -> None:
    client, home, _ = gateway
    response = client.post("/v1/completions", json={"model": model, "prompt": "a", "stream": True})
    assert response.status_code == 502 and response.json()["error"]["code"] == "engine_error"
    (row,) = logged_rows(home, {response.headers["x-request-id"]})
    assert row["http_status"] == 502
    still_serving(client)


def test_usage_absurd_in_a_stream_is_not_billed_as_zero_or_as_absurd(gateway) -> None:
    client, home, key = gateway
    with client.stream("POST", "/v1/completions", json={
            "model": "usage-overflow", "prompt": "a", "max_tokens": 3, "stream": True,
            "stream_options": {"include_usage": True}}) as response:
        body = response.read()
    assert b"[DONE]" not in body and b'"engine_error"' in body
    (row,) = logged_rows(home, {response.headers["x-request-id"]})
    assert row["completion_tokens"] is None and "usage" in row["error"]


def test_a_200_without_usage_reaches_the_client_and_logs_unknown_tokens(gateway) -> None:
    client, home, _ = gateway
    response = client.post("/v1/completions", json={"model": "no-usage", "prompt": "a", "max_tokens": 2})
    assert response.status_code == 200 and response.json()["choices"][0]["text"]
    (row,) = logged_rows(home, {response.headers["x-request-id"]})
    assert row["prompt_tokens"] is None and row["completion_tokens"] is None and "no usage" in row["error"]


def test_a_stream_without_usage_reaches_the_client_and_logs_unknown_tokens(gateway) -> None:
    client, home, _ = gateway
    response = client.post("/v1/completions", json={"model": "no-usage", "prompt": "a", "max_tokens": 2, "stream": True})
    assert response.status_code == 200 and response.text.endswith("data: [DONE]\n\n")
    (row,) = logged_rows(home, {response.headers["x-request-id"]})
    assert row["prompt_tokens"] is None and row["completion_tokens"] is None and "no usage" in row["error"]


def test_a_body_over_the_cap_declared_up_front_is_a_502_before_any_byte(gateway) -> None:
    client, home, _ = gateway
    response = client.post("/v1/completions", json={"model": "huge", "prompt": "a", "body_bytes": 4 << 20})
    assert response.status_code == 502 and "max_response_body_bytes" in response.json()["error"]["message"]
    (row,) = logged_rows(home, {response.headers["x-request-id"]})
    assert row["http_status"] == 502 and "max_response_body_bytes" in row["error"]
    still_serving(client)


def test_a_chunked_body_over_the_cap_is_cut_and_logged(gateway) -> None:
    client, home, _ = gateway
    with pytest.raises(httpx.RemoteProtocolError), client.stream(
            "POST", "/v1/completions",
            json={"model": "huge", "prompt": "a", "body_bytes": 4 << 20, "declare_length": False}) as response:
        request_id = response.headers["x-request-id"]
        assert response.status_code == 200  # 1 MiB was read before the rest was streamed on
        response.read()
    (row,) = logged_rows(home, {request_id})
    assert row["http_status"] == 502 and "max_response_body_bytes" in row["error"]
    still_serving(client)


def test_a_body_under_the_cap_streams_through_with_its_usage(gateway) -> None:
    client, home, _ = gateway
    response = client.post("/v1/completions", json={"model": "huge", "prompt": "a", "body_bytes": 2 << 20,
                                                     "declare_length": False})
    assert response.status_code == 200 and len(response.content) == 2 << 20
    assert json.loads(response.content)["usage"]["completion_tokens"] == 1
    (row,) = logged_rows(home, {response.headers["x-request-id"]})
    assert (row["prompt_tokens"], row["completion_tokens"], row["http_status"]) == (2, 1, 200)


def test_a_model_with_a_lone_surrogate_gets_an_answer_and_a_row(gateway) -> None:
    # Not a Unicode string (it could not even be spooled as UTF-8): the client's 400, naming it,
    # with a row; never the UnicodeEncodeError that used to escape as a bare 500.
    client, home, _ = gateway
    response = client.post("/v1/completions", content=b'{"model":"x\\ud800","prompt":"a"}',
                           headers={"content-type": "application/json"})
    assert response.status_code == 400 and "surrogate" in response.json()["error"]["message"]
    (row,) = logged_rows(home, {response.headers["x-request-id"]})
    assert row["http_status"] == 400
    still_serving(client)


def test_a_body_the_parser_cannot_take_is_a_400_with_a_row(gateway) -> None:
    # 10 KB of nested arrays: Python's JSON parser raises RecursionError, which used to escape as a
    # bare 500. Whatever breaks on the client's bytes is the client's 400, with a row and a count.
    client, home, _ = gateway
    before = failures(client, home).get("client", 0.0)
    body = b'{"model":"script","prompt":' + b"[" * 5_000 + b"]" * 5_000 + b"}"
    response = client.post("/v1/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text[:300]
    assert response.json()["error"]["message"]
    (row,) = logged_rows(home, {response.headers["x-request-id"]})
    assert row["http_status"] == 400
    assert failures(client, home)["client"] == before + 1
    still_serving(client)
