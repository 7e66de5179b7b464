"""The routes vLLM serves beyond chat and completions, through a real `spot serve` over HTTP, in
front of engines the test controls (tests/stand_in_engine.py, in vLLM 0.32's own response
shapes): embeddings, score/rerank, audio, Responses by id; with the official `openai` SDK where it
has the call. What a user checks: the answer is the engine's, byte for byte; one row per request
with its endpoint and the engine's usage; bad input is a 4xx in the route's error shape.

The same routes against real vLLM (Responses, Messages, tokenize): tests/test_gateway_routes_vllm.py.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from spotinference.gateway import endpoints
from spotinference.keys import create_key
from spotinference.store import Store
from tests.conftest import run_spot
from tests.servers import ServerProcess, start_gateway
from tests.stand_in_engine import StandInEngine
from tests.token_log import logged_rows

POOL = "pool-model"


@dataclass
class Stack:
    home: Path
    url: str
    key: str
    engine: StandInEngine  # serves POOL and "resp-a"
    other: StandInEngine  # serves "resp-b"
    gateway: ServerProcess

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.key, max_retries=0)

    def post(self, path: str, body: dict | bytes, **headers: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.key}", **headers}
        if isinstance(body, dict):
            return httpx.post(f"{self.url}{path}", json=body, headers=headers, timeout=30)
        return httpx.post(f"{self.url}{path}", content=body, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("gateway-routes")
    key = create_key(Store(home), "routes").key
    with StandInEngine() as engine, StandInEngine() as other:
        gateway, url = start_gateway(home, {POOL: engine.url, "resp-a": engine.url, "resp-b": other.url,
                                            "cut-stream": engine.url},
                                     extra_env={"SPOT_GATEWAY__MAX_BODY_BYTES": "200000"})
        yield Stack(home, url, key, engine, other, gateway)
        gateway.stop()


def row_of(stack: Stack, response: httpx.Response | object) -> dict:
    headers = response.headers
    request_id = headers["x-request-id"]
    rows = logged_rows(stack.home, {request_id})
    assert len(rows) == 1, f"expected one row for {request_id}"
    return rows[0]


def engine_usage(body: bytes) -> dict:
    return json.loads(body)["usage"]


# -- embeddings, score, rerank: the engine's answer, its prompt tokens logged --------------------------

@pytest.mark.parametrize("inputs", ["one two three", ["a b", "c d e", "f"], [5, 6, 7, 8], [[1, 2], [3, 4, 5]]],
                         ids=["string", "strings", "token-ids", "lists-of-token-ids"])
def test_embeddings_through_the_openai_sdk_are_the_engines_and_logged(stack: Stack, inputs: object) -> None:
    raw = stack.client().embeddings.with_raw_response.create(model=POOL, input=inputs)  # type: ignore[arg-type]
    answer = raw.parse()
    direct = httpx.post(f"{stack.engine.url}/v1/embeddings", json={"model": POOL, "input": inputs}).content
    assert json.loads(raw.content) == json.loads(direct)
    assert answer.usage.prompt_tokens == engine_usage(direct)["prompt_tokens"]
    row = row_of(stack, raw)
    assert row["endpoint"] == "/v1/embeddings" and row["http_status"] == 200 and row["model"] == POOL
    assert (row["prompt_tokens"], row["completion_tokens"]) == (answer.usage.prompt_tokens, 0)


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/score", {"text_1": "q", "text_2": ["a b", "c"]}),
    ("/v1/rerank", {"query": "q", "documents": ["a b", "c", "d e f"]}),
    ("/rerank", {"query": "q", "documents": ["a"]}),
    ("/v2/rerank", {"query": "q", "documents": ["a", "b"], "top_n": 1}),
])
def test_score_and_rerank_relay_the_engines_bytes_and_log_prompt_tokens(stack: Stack, path: str, body: dict) -> None:
    body = {"model": POOL, **body}
    response = stack.post(path, body)
    assert response.status_code == 200, response.text
    sent = stack.engine.calls[-1]
    assert (sent.method, sent.path, json.loads(sent.body)) == ("POST", path, body)
    assert response.content == httpx.post(f"{stack.engine.url}{path}", json=body).content
    row = row_of(stack, response)
    assert row["endpoint"] == path
    assert (row["prompt_tokens"], row["completion_tokens"]) == (response.json()["usage"]["prompt_tokens"], 0)


# -- audio: multipart, model read from the form, the exact bytes relayed --------------------------------

def test_a_transcription_upload_reaches_the_engine_byte_for_byte(stack: Stack) -> None:
    audio = bytes(range(256)) * 20  # 5 KB of "audio"
    raw = stack.client().audio.transcriptions.with_raw_response.create(
        model=POOL, file=("clip.wav", io.BytesIO(audio), "audio/wav"), language="en")
    assert raw.parse().text == "hello"
    sent = stack.engine.calls[-1]
    assert sent.path == "/v1/audio/transcriptions"
    assert audio in sent.body and b'name="model"\r\n\r\n' + POOL.encode() in sent.body
    assert sent.headers["content-type"].startswith("multipart/form-data; boundary=")
    row = row_of(stack, raw)
    # vLLM reports audio by duration, not tokens: the tokens stay unknown, the seconds are kept.
    assert row["endpoint"] == "/v1/audio/transcriptions" and row["http_status"] == 200
    assert row["prompt_tokens"] is None and row["completion_tokens"] is None
    assert json.loads(row["extra"]) == {"audio_seconds": engine_usage(raw.content)["seconds"]}


def test_a_translation_is_relayed_and_logged_without_usage(stack: Stack) -> None:
    raw = stack.client().audio.translations.with_raw_response.create(
        model=POOL, file=("clip.wav", io.BytesIO(b"RIFF" + b"\0" * 100), "audio/wav"))
    assert raw.parse().text == "hello"
    row = row_of(stack, raw)
    assert row["endpoint"] == "/v1/audio/translations" and row["prompt_tokens"] is None


def test_an_upload_over_the_body_limit_is_413_before_the_engine(stack: Stack) -> None:
    calls = len(stack.engine.calls)
    with pytest.raises(openai.APIStatusError) as caught:
        stack.client().audio.transcriptions.create(model=POOL, file=("big.wav", io.BytesIO(b"\0" * 300_000), "audio/wav"))
    assert caught.value.status_code == 413
    assert "limit" in caught.value.body["message"]  # type: ignore[index]
    assert len(stack.engine.calls) == calls


@pytest.mark.parametrize(("content_type", "body", "words"), [
    ("application/json", b'{"model": "pool-model"}', "multipart"),
    ("multipart/form-data", b"--x\r\n", "boundary"),
    ("multipart/form-data; boundary=x", b'--x\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nabc\r\n--x--',
     "model"),
])
def test_a_malformed_upload_is_a_400_naming_what_is_wrong(stack: Stack, content_type: str, body: bytes, words: str) -> None:
    response = stack.post("/v1/audio/transcriptions", body, **{"Content-Type": content_type})
    assert response.status_code == 400, response.text
    assert words in response.json()["error"]["message"]


# -- Responses by id: routed to the node that holds the response -----------------------------------------

def test_get_cancel_and_previous_response_id_go_to_the_node_that_served_the_response(stack: Stack) -> None:
    client = stack.client()
    created = client.responses.create(model="resp-b", input="hello there", max_output_tokens=3)
    assert created.id in stack.other.responses
    # GET names no model: only the gateway's record of who served the id can route it.
    before_a, before_b = len(stack.engine.calls), len(stack.other.calls)
    raw = client.responses.with_raw_response.retrieve(created.id)
    fetched = raw.parse()
    assert fetched.id == created.id and fetched.usage.output_tokens == 3
    assert len(stack.engine.calls) == before_a and len(stack.other.calls) == before_b + 1
    assert stack.other.calls[-1].path == f"/v1/responses/{created.id}"
    # Reading a stored answer back runs no inference: it is not billed twice.
    get_row = row_of(stack, raw)
    assert get_row["endpoint"] == "/v1/responses/{id}" and get_row["model"] == "resp-b"
    assert (get_row["prompt_tokens"], get_row["completion_tokens"], get_row["node"]) == (0, 0, "resp-b-0")
    # vLLM refuses to cancel a finished (synchronous) response: its 400 comes back as it is.
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.cancel(created.id)
    assert "Cannot cancel a synchronous response" in str(caught.value)
    assert stack.other.calls[-1].path == f"/v1/responses/{created.id}/cancel"
    follow_up = client.responses.create(model="resp-b", input="and then", previous_response_id=created.id)
    assert follow_up.previous_response_id == created.id
    assert json.loads(stack.other.calls[-1].body)["previous_response_id"] == created.id
    assert len(stack.engine.calls) == before_a


def test_an_unknown_response_id_is_an_openai_shaped_404(stack: Stack) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        stack.client().responses.retrieve("resp_never_seen")
    assert caught.value.body["code"] == "response_not_found"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        stack.client().responses.create(model="resp-a", input="x", previous_response_id="resp_never_seen")


def test_another_keys_response_is_not_found(stack: Stack) -> None:
    created = stack.client().responses.create(model="resp-a", input="mine", max_output_tokens=2)
    other_key = create_key(Store(stack.home), "someone-else").key
    import time

    time.sleep(0.6)  # the gateway picks up new keys within a second
    other = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=other_key, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(created.id)


def test_when_the_node_that_held_a_response_is_gone_the_404_says_so(stack: Stack, tmp_path: Path) -> None:
    created = stack.client().responses.create(model="resp-b", input="remember me", max_output_tokens=2)
    # A second gateway on the same home (another worker, or after a restart), where resp-b is now
    # served by another engine: the node that held the response is gone.
    with StandInEngine() as replacement:
        gateway, url = start_gateway(stack.home, {"resp-b": replacement.url})
        try:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key=stack.key, max_retries=0)
            with pytest.raises(openai.NotFoundError) as caught:
                client.responses.retrieve(created.id)
        finally:
            gateway.stop()
    error = caught.value.body
    assert error["code"] == "response_node_gone"  # type: ignore[index]
    assert "resp-b-0" in error["message"] and "no longer serving" in error["message"]  # type: ignore[index]
    assert replacement.calls == []


# -- models/{id}, wrong methods -----------------------------------------------------------------------

def test_a_model_is_retrieved_by_id_and_an_unknown_one_is_404(stack: Stack) -> None:
    client = stack.client()
    assert client.models.retrieve(POOL).id == POOL
    assert {m.id for m in client.models.list()} >= {POOL, "resp-a", "resp-b"}
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("no-such-model")
    assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_a_wrong_method_on_a_route_is_405(stack: Stack) -> None:
    response = httpx.get(f"{stack.url}/v1/embeddings", headers={"Authorization": f"Bearer {stack.key}"})
    assert response.status_code == 405
    assert "use POST" in response.json()["error"]["message"]


# -- the route table: every client route, each checked the same way ----------------------------------

def client_routes() -> list[tuple[str, str, bool]]:
    """(method, concrete path, Anthropic-shaped errors) of every route a client calls: chat's two,
    the models list and the gateway's other routes (endpoints.py), by-id paths with an id."""
    table = [("POST", "/v1/chat/completions", False), ("POST", "/v1/completions", False), ("GET", "/v1/models", False),
             ("GET", "/v1/models/{id}", False)]
    table += [(spec.method, spec.name, spec.anthropic) for spec in endpoints.routes()]
    return [(method, name.replace("{id}", POOL if name.startswith("/v1/models") else "resp_x"), anthropic)
            for method, name, anthropic in table]


ANY_BODY = {"model": POOL, "input": "x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
            "query": "q", "documents": ["a"], "tokens": [1], "prompt": "x", "text_1": "a", "text_2": "b"}
UPLOAD = (b'--zz\r\nContent-Disposition: form-data; name="model"\r\n\r\n' + POOL.encode() + b'\r\n'
          b'--zz\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\nRIFF\r\n--zz--\r\n')


def call(stack: Stack, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    """The route's request as a client sends it: JSON, a multipart upload, or no body."""
    if method == "GET" or "/responses/" in path:
        return httpx.request(method, f"{stack.url}{path}", headers=headers, timeout=30)
    if path.startswith("/v1/audio/"):
        return httpx.request(method, f"{stack.url}{path}", content=UPLOAD, timeout=30,
                             headers={**headers, "Content-Type": "multipart/form-data; boundary=zz"})
    return httpx.request(method, f"{stack.url}{path}", json=ANY_BODY, headers=headers, timeout=30)


def assert_error_shape(response: httpx.Response, anthropic: bool) -> dict:
    """The route's error object (OpenAI's, or Anthropic's on /v1/messages*), returned."""
    body = response.json()
    if anthropic:
        assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    else:
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


@pytest.mark.parametrize(("method", "path", "anthropic"), client_routes(), ids=lambda v: v if isinstance(v, str) else "")
def test_a_key_in_x_api_key_or_a_bearer_header_is_the_same_on_every_client_route(
        stack: Stack, method: str, path: str, anthropic: bool) -> None:
    # The anthropic SDK sends x-api-key on every call (models too), the openai SDK a bearer token:
    # either header carries the key on every route, with the same answer.
    bearer = call(stack, method, path, {"Authorization": f"Bearer {stack.key}"})
    api_key = call(stack, method, path, {"x-api-key": stack.key})
    assert bearer.status_code != 401, bearer.text
    assert api_key.status_code == bearer.status_code, (api_key.text, bearer.text)
    for headers in ({"x-api-key": "sk-spot-not-a-key"}, {"Authorization": "Bearer sk-spot-not-a-key"}, {},
                    # the bearer token wins: a wrong one is not rescued by a right x-api-key
                    {"Authorization": "Bearer sk-spot-not-a-key", "x-api-key": stack.key}):
        refused = call(stack, method, path, headers)
        assert refused.status_code == 401, (headers, refused.text)
        error = assert_error_shape(refused, anthropic)
        if not anthropic:
            assert error["code"] == "invalid_api_key"
        if not headers:
            assert "x-api-key" in error["message"] and "Authorization: Bearer" in error["message"]


@pytest.mark.parametrize("header", ["x-api-key", "api_key"])
def test_the_anthropic_sdk_lists_and_retrieves_models_with_either_header(stack: Stack, header: str) -> None:
    import anthropic

    # The installed anthropic SDK sends its api_key as "Authorization: Bearer"; earlier ones, and
    # Anthropic's own API reference, send "x-api-key", which a client sets as a default header.
    if header == "x-api-key":
        client = anthropic.Anthropic(base_url=stack.url, api_key=None, default_headers={"x-api-key": stack.key},
                                     max_retries=0)
    else:
        client = anthropic.Anthropic(base_url=stack.url, api_key=stack.key, max_retries=0)
    model = client.models.retrieve(POOL)
    # The answer is vLLM's (OpenAI's) model object, not Anthropic's ModelInfo: the anthropic SDK
    # sees the id, and OpenAI's members (object, created, owned_by) as extra fields.
    assert model.id == POOL
    assert model.model_extra is not None and model.model_extra["object"] == "model"
    assert {m.id for m in client.models.list()} >= {POOL, "resp-a", "resp-b"}
    with pytest.raises(anthropic.NotFoundError):
        client.models.retrieve("no-such-model")
    wrong = anthropic.Anthropic(base_url=stack.url, api_key=None, default_headers={"x-api-key": "sk-spot-wrong"},
                                max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        wrong.models.retrieve(POOL)


WRONG_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")


@pytest.mark.parametrize(("method", "path", "anthropic"), client_routes(), ids=lambda v: v if isinstance(v, str) else "")
def test_a_wrong_method_on_any_route_is_405_with_allow_and_writes_no_row(
        stack: Stack, method: str, path: str, anthropic: bool) -> None:
    # As chat's 405: the route's error shape, the method it takes in Allow, and nothing in the
    # token log (no request reached an engine or was refused for its content).
    for wrong in (m for m in WRONG_METHODS if m != method):
        response = httpx.request(wrong, f"{stack.url}{path}", headers={"Authorization": f"Bearer {stack.key}"},
                                 json=ANY_BODY if wrong != "GET" else None, timeout=30)
        assert response.status_code == 405, (wrong, response.text)
        # Litestar's routes (the models list) also answer OPTIONS, and say so.
        assert set(response.headers["allow"].split(", ")) - {"OPTIONS"} == {method}, (wrong, response.headers)
        error = assert_error_shape(response, anthropic)
        assert f"use {method}" in error["message"], error
    # A request that is logged, sent after them: once its row is in, so would theirs be.
    sentinel = stack.post("/v1/embeddings", {"model": POOL, "input": "after the 405s"})
    assert sentinel.status_code == 200
    row_of(stack, sentinel)
    listed = run_spot("requests", "--status", "405", "--json", env={"SPOT_HOME": str(stack.home)})
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []


# -- the log: spot requests and spot cost --by endpoint ----------------------------------------------

def test_spot_requests_shows_each_requests_endpoint(stack: Stack) -> None:
    embedded = stack.client().embeddings.with_raw_response.create(model=POOL, input="x y")
    reranked = stack.post("/v1/rerank", {"model": POOL, "query": "q", "documents": ["a"]})
    logged_rows(stack.home, {embedded.headers["x-request-id"], reranked.headers["x-request-id"]}, expect=2)
    result = run_spot("requests", "--last", "2", "--json", env={"SPOT_HOME": str(stack.home)})
    assert result.returncode == 0, result.stderr
    assert [r["endpoint"] for r in json.loads(result.stdout)] == ["/v1/rerank", "/v1/embeddings"]
    table = run_spot("requests", "--last", "2", env={"SPOT_HOME": str(stack.home), "COLUMNS": "80"})
    assert table.returncode == 0, table.stderr
    # No room for an endpoint column in 80: it is the second line of the model's cell.
    assert "rerank" in table.stdout and "embeddings" in table.stdout and "the endpoint" in table.stdout


# -- bad input on every route: the route's error shape, never a 500 from the gateway -----------------------

def test_bad_json_and_missing_members_are_400s_in_each_routes_shape(stack: Stack) -> None:
    for path in ("/v1/responses", "/v1/embeddings", "/tokenize", "/detokenize", "/v1/score", "/v1/rerank", "/rerank",
                 "/v2/rerank"):
        for body in (b"{not json", b'{"model": 5}', b"[1]"):
            response = stack.post(path, body)
            assert response.status_code == 400, (path, body, response.text)
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    response = stack.post("/v1/embeddings", {"model": POOL})
    assert response.json()["error"]["message"] == "'input' is required on /v1/embeddings"
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        response = stack.post(path, b"{not json")
        assert response.status_code == 400
        body = response.json()
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error", body
        assert set(body["error"]) == {"type", "message"}


_ROUTE_PATHS = ["/v1/responses", "/v1/responses/resp_x", "/v1/responses/resp_x/cancel", "/v1/messages",
                "/v1/messages/count_tokens", "/v1/embeddings", "/tokenize", "/detokenize", "/v1/score", "/v1/rerank",
                "/rerank", "/v2/rerank", "/v1/audio/transcriptions", "/v1/audio/translations", "/v1/models/x"]


def _route_bodies():
    from hypothesis import strategies as st

    from tests.test_gateway_clients import _encode, _json

    like = st.fixed_dictionaries(
        {"model": st.sampled_from([POOL, "", "other"]) | _json},
        optional={"input": _json, "messages": _json, "max_tokens": _json, "stream": _json, "query": _json,
                  "documents": _json, "tokens": _json, "previous_response_id": _json, "prompt": _json})
    return st.binary(max_size=300) | _json.map(_encode) | like.map(_encode)


def test_random_requests_on_every_route_never_get_a_500_from_the_gateway(stack: Stack) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from tests.servers import dechunk
    from tests.test_gateway_clients import ENGINE_SIDE_CODES, _raw_request

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(body=_route_bodies(), path=st.sampled_from(_ROUTE_PATHS),
           method=st.sampled_from([b"POST", b"POST", b"GET", b"DELETE"]),
           auth=st.sampled_from(["bearer", "x-api-key", "none", "junk"]),
           content_type=st.sampled_from([b"application/json", b"multipart/form-data; boundary=zz", b"text/plain"]))
    def check(body: bytes, path: str, method: bytes, auth: str, content_type: bytes) -> None:
        headers = {"bearer": [(b"Authorization", f"Bearer {stack.key}".encode())],
                   "x-api-key": [(b"x-api-key", stack.key.encode())], "none": [],
                   "junk": [(b"x-api-key", b"\xff\xfe junk")]}[auth] + [(b"Content-Type", content_type)]
        reply = _raw_request(stack.url, method, path, headers, body)
        head, _, payload = reply.partition(b"\r\n\r\n")
        status = int(head.split(b"\r\n", 1)[0].split()[1])
        assert status != 500, reply[:500]
        if status < 400:
            return
        if b"transfer-encoding: chunked" in head.lower():
            payload = dechunk(payload)
        answer = json.loads(payload)
        if answer == {"detail": "Not Found"}:
            return  # the stand-in engine's own answer (it serves no Messages API), relayed as it came
        if path.startswith("/v1/messages"):
            assert answer["type"] == "error" and set(answer["error"]) == {"type", "message"}, answer
            return
        error = answer["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        if status >= 500:
            assert error["code"] in ENGINE_SIDE_CODES, error

    check()
    assert stack.client().embeddings.create(model=POOL, input="still serving").data


def test_tools_response_format_logprobs_n_and_stop_reach_the_engine_unchanged(stack: Stack) -> None:
    body = (b'{"model": "resp-a", "input": "x", "tools": [{"type": "function", "name": "f", "parameters": {}}], '
            b'"text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}}}, '
            b'"top_logprobs": 2, "n": 2, "stop": ["\\n"], "tool_choice": "auto"}')
    response = stack.post("/v1/responses", body, **{"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    assert stack.engine.calls[-1].body == body  # the client's bytes, not a re-encoding


# -- spot cost --by endpoint -------------------------------------------------------------------------

def test_spot_cost_by_endpoint_splits_spend_and_tokens_by_route(spot, home: Path) -> None:
    from datetime import timedelta
    from decimal import Decimal

    from tests.test_cli_cost import WINDOW
    from tests.test_cost_queries import Seed, at

    # The fleet bills $0.10 a minute for the hour (6.00); three requests, one logged before the
    # gateway recorded routes: 1500 + 500 tokens on chat, 300 + 100 on responses, 100 + 0 older.
    seed = Seed(Store(home))
    t, k = at(9, 59), 0
    while t < at(11, 1):
        seed.sample(seed.run(t), t, "vm-1", str(Decimal("0.1") * k))
        t, k = t + timedelta(minutes=1), k + 1
    seed.request(at(10, 10), 1500, 500)
    seed.request(at(10, 20), 300, 100)
    seed.request(at(10, 50), 100, 0)
    store = seed.write()
    with store.transaction() as con:
        con.execute("UPDATE requests SET endpoint = '/v1/chat/completions' WHERE request_id = 'req-0'")
        con.execute("UPDATE requests SET endpoint = '/v1/responses' WHERE request_id = 'req-1'")
    result = spot("cost", *WINDOW, "--by", "endpoint", "--json")
    assert result.returncode == 0, result.stderr
    rows = {r["endpoint"]: r for r in json.loads(result.stdout)["rows"]}
    assert {e: (r["prompt_tokens"], r["completion_tokens"]) for e, r in rows.items()} == {
        "/v1/chat/completions": (1500, 500), "/v1/responses": (300, 100), "(not recorded)": (100, 0)}
    # 6.00 split by tokens: 2000, 400 and 100 of 2500.
    assert {e: r["spend_usd"] for e, r in rows.items()} == pytest.approx(
        {"/v1/chat/completions": 4.8, "/v1/responses": 0.96, "(not recorded)": 0.24})
    table = spot("cost", *WINDOW, "--by", "endpoint")
    assert table.returncode == 0, table.stderr
    assert "endpoint" in table.stdout and "/v1/responses" in table.stdout


def test_a_messages_stream_whose_engine_dies_ends_with_an_anthropic_error_event(stack: Stack) -> None:
    import anthropic

    client = anthropic.Anthropic(base_url=stack.url, api_key=stack.key, max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as caught:
        with client.messages.stream(model="cut-stream", max_tokens=5, messages=[{"role": "user", "content": "hi"}]) as s:
            for _ in s:
                pass
    assert "the engine failed mid-stream" in str(caught.value)
    rows = logged_rows(stack.home, {caught.value.response.headers["x-request-id"]})
    assert len(rows) == 1 and rows[0]["http_status"] == 502
    # What the engine said before it died: 7 input tokens; the output is unknown.
    assert (rows[0]["prompt_tokens"], rows[0]["completion_tokens"]) == (7, None)


def test_a_transcription_through_the_gateway_matches_spot_sim_engine_direct(tmp_path_factory: pytest.TempPathFactory,
                                                                          stack: Stack) -> None:
    import wave

    from tests.servers import start_sim_engine

    engine, engine_url = start_sim_engine(tmp_path_factory.mktemp("sim-whisper"), model="tiny-whisper",
                                          extra=["--runner", "transcription"])
    gateway, url = start_gateway(stack.home, {"tiny-whisper": engine_url})
    try:
        clip = io.BytesIO()
        with wave.open(clip, "wb") as out:  # 2.5 s of 16 kHz mono silence: vLLM rounds up to 3 s
            out.setnchannels(1), out.setsampwidth(2), out.setframerate(16000)
            out.writeframes(b"\0\0" * 40000)
        audio = clip.getvalue()
        direct = openai.OpenAI(base_url=f"{engine_url}/v1", api_key="unused", max_retries=0)
        via = openai.OpenAI(base_url=f"{url}/v1", api_key=stack.key, max_retries=0)
        expected = direct.audio.transcriptions.create(model="tiny-whisper", file=("a.wav", audio, "audio/wav"))
        raw = via.audio.transcriptions.with_raw_response.create(model="tiny-whisper", file=("a.wav", audio, "audio/wav"))
        assert raw.parse().text == expected.text
        row = row_of(stack, raw)
        assert json.loads(row["extra"]) == {"audio_seconds": 3} == {"audio_seconds": engine_usage(raw.content)["seconds"]}
    finally:
        gateway.stop()
        engine.stop()
