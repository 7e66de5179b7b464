"""The gateway's client side under clients nobody here shaped: bodies the JSON parser cannot take,
odd but valid headers, and random bodies and headers from hypothesis.

Everything goes over real HTTP to a real `spot serve` in front of the simulated engine. The
promise for every case: an OpenAI-shaped answer (4xx for what the client sent), never a 500 from
the gateway's own code, and the gateway still serving afterwards.
"""

from __future__ import annotations

import json
import socket

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spotinference.keys import create_key
from spotinference.store import Store
from tests.servers import dechunk, start_gateway

MODEL = "tiny-chat"
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def gateway(sim_engine: str, tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("gateway-clients")
    key = create_key(Store(home), "clients").key
    server, url = start_gateway(home, {MODEL: sim_engine})
    yield url, key, server
    server.stop()


def post_raw(url: str, key: str, body: bytes, *, auth: str | None = None, path: str = CHAT) -> httpx.Response:
    headers = {"Authorization": auth if auth is not None else f"Bearer {key}", "Content-Type": "application/json"}
    return httpx.post(f"{url}{path}", content=body, headers=headers, timeout=30)


def assert_client_error(response: httpx.Response, *words: str) -> None:
    assert response.status_code == 400, (response.status_code, response.text[:300])
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    for word in words:
        assert word in error["message"].lower(), error["message"]


def still_serving(url: str, key: str) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    response = httpx.post(f"{url}{CHAT}", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert response.status_code == 200, response.text[:300]


NESTED = b'{"model": "tiny-chat", "messages": ' + b"[" * 2000 + b"]" * 2000 + b"}"


@pytest.mark.parametrize(("body", "words"), [
    pytest.param(NESTED, ["nested"], id="2KB-deeply-nested"),
    pytest.param(b'{"model": "tiny-\\ud800chat", "messages": [{"role": "user", "content": "hi"}]}',
                 ["surrogate"], id="lone-surrogate-in-model"),
    pytest.param(b'{"model": "tiny-chat", "messages": [{"role": "user", "content": "\\udc00"}]}',
                 ["surrogate"], id="lone-surrogate-in-content"),
    pytest.param(b'{"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
                 ["nan"], id="NaN"),
    pytest.param(b'{"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "top_p": -Infinity}',
                 ["infinity"], id="Infinity"),
    pytest.param(b'{"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "temperature": 1e400}',
                 ["range"], id="float-overflow"),
    pytest.param(b'{"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "seed": 1' + b"0" * 5000 + b"}",
                 ["digits"], id="huge-integer"),
    pytest.param(b'{"model": "tiny-chat", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
                 ["utf-8"], id="invalid-utf8"),
    pytest.param(b'{"model": "tiny-\xed\xa0\x80chat", "messages": [{"role": "user", "content": "hi"}]}',
                 ["utf-8"], id="utf8-encoded-surrogate"),
    pytest.param('{"model": "tiny-chat", "messages": [{"role": "user", "content": "\udc00"}]}'.encode("utf-16-le", "surrogatepass"),
                 ["utf-16"], id="utf16-lone-surrogate"),
    pytest.param(b'[{"model": "tiny-chat"}]', ["object"], id="array-top-level"),
    pytest.param(b'"tiny-chat"', ["object"], id="string-top-level"),
    pytest.param(b'{"model": 7, "messages": [{"role": "user", "content": "hi"}]}', ["model"], id="model-not-string"),
    pytest.param(b'{"model": ["tiny-chat"], "messages": []}', ["model"], id="model-array"),
    pytest.param(b"", ["json"], id="empty"),
])
def test_a_body_the_parser_cannot_take_is_a_400_naming_the_problem(gateway, body: bytes, words: list[str]) -> None:
    url, key, _ = gateway
    assert_client_error(post_raw(url, key, body), *words)
    still_serving(url, key)


def test_a_valid_surrogate_pair_is_not_refused(gateway) -> None:
    url, key, _ = gateway
    body = b'{"model": "tiny-chat", "messages": [{"role": "user", "content": "\\ud83d\\ude00"}], "max_tokens": 2}'
    assert post_raw(url, key, body).status_code == 200


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer  ", "bEaReR \t"])
def test_the_bearer_scheme_is_case_insensitive_and_spaces_are_allowed(gateway, scheme: str) -> None:
    url, key, _ = gateway
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode()
    response = post_raw(url, key, body, auth=f"{scheme} {key}")
    assert response.status_code == 200, response.text[:300]
    models = httpx.get(f"{url}/v1/models", headers={"Authorization": f"{scheme} {key}"}, timeout=10)
    assert models.status_code == 200


@pytest.mark.parametrize("auth", ["Basic abc", "Bearer", "Bearerabc", "bearer sk-spot-wrong", ""])
def test_other_schemes_and_wrong_keys_are_still_401(gateway, auth: str) -> None:
    url, key, _ = gateway
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()
    response = post_raw(url, key, body, auth=auth)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


# -- hypothesis: random bodies and headers --------------------------------------------------------

_json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_json = st.recursive(_json_leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                     max_leaves=20)
_chat_like = st.fixed_dictionaries(
    {"model": st.sampled_from([MODEL, "", "other"]) | st.text(max_size=10) | _json},
    optional={"messages": _json | st.just([{"role": "user", "content": "hi"}]), "stream": _json,
              "stream_options": _json, "max_tokens": st.integers(-2, 3) | _json, "n": st.integers(-1, 3)},
)


def _encode(value: object) -> bytes:
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


_bodies = (
    st.binary(max_size=300)
    | _json.map(_encode)
    | _chat_like.map(_encode)
    | st.tuples(_chat_like.map(_encode), st.integers(0, 200), st.binary(max_size=5)).map(
        lambda t: t[0][: t[1]] + t[2] + t[0][t[1]:])
)
_header_values = st.binary(max_size=40).map(lambda b: bytes(c for c in b if c not in b"\r\n\x00"))


def _raw_request(url: str, method: bytes, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    head = method + b" " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    head += b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    head += b"Content-Length: %d\r\n\r\n" % len(body)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head + body)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


# What a 5xx from the gateway may be: the engine's failure or no engine, never the gateway's own.
ENGINE_SIDE_CODES = {"engine_error", "engine_unreachable", "engine_timeout", "no_serving_node"}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_bodies, auth=st.sampled_from(["key", "lower", "none", "junk"]),
       extra=st.lists(st.tuples(st.sampled_from([b"x-a", b"content-type", b"accept", b"authorization", b"expect",
                                                 b"transfer-encoding", b"x-request-id"]), _header_values), max_size=3),
       method=st.sampled_from([b"POST", b"POST", b"POST", b"GET", b"PUT"]),
       path=st.sampled_from([CHAT, CHAT, "/v1/completions", "/v1/models", "/health", "/metrics", "/v1/../v1/chat/completions"]))
def test_random_bodies_and_headers_never_get_a_500_and_the_gateway_keeps_serving(
    gateway, body, auth, extra, method, path,
) -> None:
    url, key, _ = gateway
    headers = {"key": [(b"Authorization", f"Bearer {key}".encode())],
               "lower": [(b"authorization", f"bearer {key}".encode())],
               "none": [], "junk": [(b"Authorization", b"Bearer \xff\xfe junk")]}[auth]
    headers += [(n, v) for n, v in extra if not (n == b"expect" and v.strip().lower() == b"100-continue")]
    reply = _raw_request(url, method, path, headers, body)
    assert reply, "empty reply"
    head, _, payload = reply.partition(b"\r\n\r\n")
    status = int(head.split(b"\r\n", 1)[0].split()[1])
    assert status != 500, reply[:500]
    if status >= 400:
        assert b"application/json" in head.lower(), reply[:500]
        if b"transfer-encoding: chunked" in head.lower():
            payload = dechunk(payload)
        error = json.loads(payload)["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        if status >= 500:
            assert error["code"] in ENGINE_SIDE_CODES, error


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0, 1), stream=st.booleans(), wait_s=st.sampled_from([0, 0, 0.05, 0.3]))
def test_a_client_that_hangs_up_at_a_random_point_leaves_the_gateway_serving(gateway, cut, stream, wait_s) -> None:
    """The request is cut anywhere (in the request line, the headers, the body, or after it while
    the answer streams) and the connection closed."""
    url, key, _ = gateway
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 30,
                       "stream": stream}).encode()
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
               b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (key.encode(), len(body), body))
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request[: max(1, int(len(request) * cut))])
        if wait_s:
            sock.settimeout(wait_s)
            try:
                sock.recv(1024)
            except TimeoutError:
                pass
    reply = httpx.get(f"{url}/health", timeout=10)
    assert reply.status_code == 200 and reply.json() == {"status": "ok"}


def test_after_the_random_clients_the_gateway_still_serves(gateway) -> None:
    url, key, server = gateway
    still_serving(url, key)
    assert server.proc is not None and server.proc.poll() is None
    assert "Traceback" not in server.log_tail(200)
