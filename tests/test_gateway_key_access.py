"""A key's expiry and models allowlist (issue 23), through a real `spot serve` over HTTP with the
official `openai` and `anthropic` SDKs: a model outside the allowlist is answered exactly as a
model that does not exist, on every client route and in `GET /v1/models`; an expired key is a
401 `key_expired`; `spot keys update` reaches the running gateway within a second.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from spotinference.key_settings import KeySettings
from spotinference.keys import create_key
from spotinference.store import Store
from tests.conftest import run_spot
from tests.servers import ServerProcess, start_gateway
from tests.stand_in_engine import StandInEngine

CHAT_MODEL = "tiny-chat"  # spot sim engine
POOL = "pool-model"  # the stand-in engine (embeddings, Messages)


@dataclass
class Stack:
    home: Path
    url: str
    gateway: ServerProcess
    pool: StandInEngine  # serves POOL

    def openai(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0)

    def new_key(self, name: str, **settings: object) -> str:
        """A key with these settings, once the running gateway accepts it."""
        key = create_key(Store(self.home), name, KeySettings(**settings)).key  # type: ignore[arg-type]
        within_a_second(lambda: httpx.get(f"{self.url}/v1/models", headers=bearer(key)).status_code != 401,
                        "the new key is not accepted")
        return key


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def within_a_second(check: Callable[[], bool], what: str) -> None:
    # The gateway re-reads keys every 0.25 s; 5 s is the generous upper bound (a loaded machine).
    deadline = time.monotonic() + 5
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.fixture(scope="module")
def stack(sim_engine: str, tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("gateway-key-access")
    with StandInEngine() as pool:
        gateway, url = start_gateway(home, {CHAT_MODEL: sim_engine, POOL: pool.url})
        yield Stack(home, url, gateway, pool)
        gateway.stop()


# Every client route that names a model, with a body the route accepts: (path, body for MODEL).
ROUTES = [
    ("/v1/chat/completions", lambda m: {"model": m, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}),
    ("/v1/completions", lambda m: {"model": m, "prompt": "hi", "max_tokens": 2}),
    ("/v1/embeddings", lambda m: {"model": m, "input": "hi"}),
    ("/v1/responses", lambda m: {"model": m, "input": "hi", "max_output_tokens": 2}),
    ("/v1/messages", lambda m: {"model": m, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/messages/count_tokens", lambda m: {"model": m, "messages": [{"role": "user", "content": "hi"}]}),
    ("/tokenize", lambda m: {"model": m, "prompt": "hi"}),
    ("/v1/score", lambda m: {"model": m, "text_1": "a", "text_2": ["b"]}),
    ("/v1/rerank", lambda m: {"model": m, "query": "q", "documents": ["a"]}),
]


@pytest.mark.parametrize(("path", "body"), ROUTES, ids=[r[0] for r in ROUTES])
def test_a_model_outside_the_allowlist_is_answered_as_a_model_that_does_not_exist(stack: Stack, path: str,
                                                                                   body: Callable) -> None:
    key = stack.new_key(f"narrow{path.replace('/', '-')}", models=(CHAT_MODEL,))
    calls = len(stack.pool.calls)
    hidden = httpx.post(f"{stack.url}{path}", json=body(POOL), headers=bearer(key), timeout=30)
    missing = httpx.post(f"{stack.url}{path}", json=body("no-such-model"), headers=bearer(key), timeout=30)
    assert hidden.status_code == missing.status_code == 404, hidden.text
    assert hidden.text == missing.text.replace("no-such-model", POOL)
    # It names only what the key may use: nothing says the hidden model exists.
    assert POOL not in hidden.text.replace(f"'{POOL}'", "") and CHAT_MODEL in hidden.text
    assert len(stack.pool.calls) == calls, "a hidden model's request reached its engine"
    # A key without an allowlist reaches the same model's engine on the same route.
    open_key = stack.new_key(f"open{path.replace('/', '-')}")
    httpx.post(f"{stack.url}{path}", json=body(POOL), headers=bearer(open_key), timeout=30)
    assert [c.path for c in stack.pool.calls[calls:]] == [path]


def test_the_allowlist_hides_models_from_the_models_routes_and_the_sdk(stack: Stack) -> None:
    client = stack.openai(stack.new_key("only-chat", models=(CHAT_MODEL,)))
    assert [m.id for m in client.models.list()] == [CHAT_MODEL]
    assert client.models.retrieve(CHAT_MODEL).id == CHAT_MODEL
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve(POOL)
    assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model=POOL, input="x")
    assert client.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=2).choices
    everything = stack.openai(stack.new_key("everything"))
    assert sorted(m.id for m in everything.models.list()) == sorted([CHAT_MODEL, POOL])


def test_an_anthropic_client_is_refused_a_hidden_model_in_anthropics_shape(stack: Stack) -> None:
    key = stack.new_key("anthropic-narrow", models=(CHAT_MODEL,))
    client = anthropic.Anthropic(base_url=stack.url, api_key=key, max_retries=0)  # sends x-api-key
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model=POOL, max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    assert f"The model '{POOL}' does not exist" in str(caught.value)


def test_spot_keys_update_changes_a_running_gateways_allowlist_within_a_second(stack: Stack) -> None:
    key = stack.new_key("widened", models=(CHAT_MODEL,))
    client = stack.openai(key)
    assert [m.id for m in client.models.list()] == [CHAT_MODEL]
    updated = run_spot("keys", "update", "widened", "--clear", "models", env={"SPOT_HOME": str(stack.home)})
    assert updated.returncode == 0, updated.stderr
    within_a_second(lambda: len(client.models.list().data) == 2, "the cleared allowlist did not reach the gateway")
    assert client.embeddings.create(model=POOL, input="x").data
    narrowed = run_spot("keys", "update", "widened", "--models", POOL, env={"SPOT_HOME": str(stack.home)})
    assert narrowed.returncode == 0, narrowed.stderr
    within_a_second(lambda: [m.id for m in client.models.list()] == [POOL], "the new allowlist did not arrive")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)


def test_an_expired_key_is_a_401_key_expired_on_every_route(stack: Stack) -> None:
    key = stack.new_key("short-lived", expires_at=None, rpm=1000)  # a key with settings, not expired
    client = stack.openai(key)
    assert client.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=2).choices
    ended = run_spot("keys", "update", "short-lived", "--expires", "2026-01-01", env={"SPOT_HOME": str(stack.home)})
    assert ended.returncode == 0, ended.stderr
    within_a_second(lambda: httpx.get(f"{stack.url}/v1/models", headers=bearer(key)).status_code == 401,
                    "the expiry did not reach the gateway")
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert caught.value.code == "key_expired"
    assert "expired at 2026-01-02T00:00:00+00:00" in caught.value.message
    for path, body in ROUTES:
        answer = httpx.post(f"{stack.url}{path}", json=body(CHAT_MODEL), headers=bearer(key), timeout=30)
        assert answer.status_code == 401, (path, answer.text)
        if path.startswith("/v1/messages"):
            assert answer.json()["error"]["type"] == "authentication_error", path
            assert "expired" in answer.json()["error"]["message"], path
        else:
            assert answer.json()["error"]["code"] == "key_expired", path
    for path in ("/v1/models", f"/v1/models/{CHAT_MODEL}"):
        answer = httpx.get(f"{stack.url}{path}", headers=bearer(key))
        assert (answer.status_code, answer.json()["error"]["code"]) == (401, "key_expired"), path
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=stack.url, api_key=key, max_retries=0).messages.create(
            model=CHAT_MODEL, max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    # Extending it brings it back: expiry is a setting, not a revocation.
    extended = run_spot("keys", "update", "short-lived", "--clear", "expires", env={"SPOT_HOME": str(stack.home)})
    assert extended.returncode == 0, extended.stderr
    within_a_second(lambda: httpx.get(f"{stack.url}/v1/models", headers=bearer(key)).status_code == 200,
                    "the cleared expiry did not reach the gateway")
    listed = json.loads(run_spot("keys", "list", "--json", env={"SPOT_HOME": str(stack.home)}).stdout)
    assert next(k for k in listed if k["name"] == "short-lived")["expired"] is False


def test_a_stored_response_of_a_model_the_key_lost_is_not_found(stack: Stack) -> None:
    key = stack.new_key("lost-model")
    client = stack.openai(key)
    created = client.responses.create(model=POOL, input="keep this", max_output_tokens=2)
    assert client.responses.retrieve(created.id).id == created.id
    narrowed = run_spot("keys", "update", "lost-model", "--models", CHAT_MODEL, env={"SPOT_HOME": str(stack.home)})
    assert narrowed.returncode == 0, narrowed.stderr
    within_a_second(lambda: [m.id for m in client.models.list()] == [CHAT_MODEL], "the allowlist did not arrive")
    calls = len(stack.pool.calls)
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.retrieve(created.id)
    assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=CHAT_MODEL, input="and then", previous_response_id=created.id)
    assert len(stack.pool.calls) == calls
