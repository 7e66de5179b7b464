"""The Responses API, the Anthropic Messages API and tokenize through `spot serve` in front of REAL
vLLM on the CPU (the tiny chat model), with the official `openai` and `anthropic` SDKs as the
clients: the same answers as calling vLLM directly, and a token log equal to vLLM's own counters.

Slow (real vLLM; TEST_VLLM_URL reuses one already running, see tests/conftest.py).
"""

from __future__ import annotations

import json
import re
import socket
from dataclasses import dataclass
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from spotinference.keys import create_key
from spotinference.store import Store
from tests.servers import ServerProcess, start_gateway
from tests.test_gateway_contract import wait_idle
from tests.token_log import logged_rows

pytestmark = pytest.mark.slow

MODEL = "tiny-chat"
SAME = {"temperature": 0.0, "max_output_tokens": 6}  # greedy: the same text direct and through the gateway


@dataclass
class Stack:
    engine_url: str
    url: str
    key: str
    home: Path
    gateway: ServerProcess

    def openai(self, direct: bool = False) -> openai.OpenAI:
        if direct:
            return openai.OpenAI(base_url=f"{self.engine_url}/v1", api_key="unused", max_retries=0)
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.key, max_retries=0)

    def anthropic(self, direct: bool = False, key: str | None = None) -> anthropic.Anthropic:
        if direct:
            return anthropic.Anthropic(base_url=self.engine_url, api_key="unused", max_retries=0)
        return anthropic.Anthropic(base_url=self.url, api_key=key or self.key, max_retries=0)


@pytest.fixture(scope="module")
def stack(vllm_engine: str, tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("gateway-routes-vllm")
    key = create_key(Store(home), "routes-vllm").key
    gateway, url = start_gateway(home, {MODEL: vllm_engine})
    yield Stack(vllm_engine, url, key, home, gateway)
    gateway.stop()


def counters_moved(stack: Stack, before: dict[str, float]) -> tuple[float, float]:
    after = wait_idle(stack.engine_url)
    return (after["vllm:prompt_tokens_total"] - before["vllm:prompt_tokens_total"],
            after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"])


def the_row(stack: Stack, request_id: str) -> dict:
    rows = logged_rows(stack.home, {request_id})
    assert len(rows) == 1
    return rows[0]


# -- Responses ----------------------------------------------------------------------------------------

def test_responses_not_streamed_are_the_engines_and_logged_as_vllm_counted(stack: Stack) -> None:
    direct = stack.openai(direct=True).responses.create(model=MODEL, input="Name a GPU.", **SAME)
    before = wait_idle(stack.engine_url)
    raw = stack.openai().responses.with_raw_response.create(model=MODEL, input="Name a GPU.", **SAME)
    via = raw.parse()
    assert via.output_text == direct.output_text and via.status == direct.status
    assert via.usage.input_tokens == direct.usage.input_tokens
    row = the_row(stack, raw.headers["x-request-id"])
    assert row["endpoint"] == "/v1/responses" and row["http_status"] == 200 and not row["streamed"]
    assert (row["prompt_tokens"], row["completion_tokens"]) == (via.usage.input_tokens, via.usage.output_tokens)
    assert counters_moved(stack, before) == (via.usage.input_tokens, via.usage.output_tokens)


def test_responses_streamed_are_the_engines_events_and_the_completed_usage_is_logged(stack: Stack) -> None:
    def events(client: openai.OpenAI) -> tuple[list, str, str | None]:
        with client.responses.with_streaming_response.create(model=MODEL, input="Name a GPU.", stream=True,
                                                              **SAME) as response:
            lines = list(response.iter_lines())
        kinds = [line for line in lines if line.startswith("event: ")]
        # vLLM merges tokens into fewer deltas when it falls behind: the kinds in order, each once.
        kinds = [k for i, k in enumerate(kinds) if i == 0 or kinds[i - 1] != k]
        done = [json.loads(line[6:]) for line in lines if line.startswith("data: ") and '"response.output_text.done"' in line]
        return kinds, done[0]["text"], response.headers.get("x-request-id")

    direct, direct_text, _ = events(stack.openai(direct=True))
    before = wait_idle(stack.engine_url)
    via, text, request_id = events(stack.openai())
    assert (via, text) == (direct, direct_text) and via[-1] == "event: response.completed"
    stream = stack.openai().responses.create(model=MODEL, input="Name a GPU.", stream=True, **SAME)
    completed = [e for e in stream if e.type == "response.completed"][0].response
    assert completed.output_text  # the SDK reads the relayed stream as it reads vLLM's
    row = the_row(stack, request_id)  # type: ignore[arg-type]
    assert row["endpoint"] == "/v1/responses" and row["streamed"] and row["finish_reason"] == completed.status
    assert (row["prompt_tokens"], row["completion_tokens"]) == (completed.usage.input_tokens,  # type: ignore[union-attr]
                                                                completed.usage.output_tokens)  # type: ignore[union-attr]
    prompt, generated = counters_moved(stack, before)
    assert (prompt, generated) == (2 * row["prompt_tokens"], 2 * row["completion_tokens"])  # the two streams


def test_a_stored_response_is_retrieved_continued_and_cancelled_on_the_engine_that_holds_it(stack: Stack) -> None:
    # The fixture's vLLM keeps responses (VLLM_ENABLE_RESPONSES_API_STORE=1), in its memory only.
    client = stack.openai()
    created = client.responses.create(model=MODEL, input="Name a GPU.", **SAME)
    raw = client.responses.with_raw_response.retrieve(created.id)
    fetched = raw.parse()
    direct = stack.openai(direct=True).responses.retrieve(created.id)
    assert fetched.id == direct.id == created.id and fetched.output_text == direct.output_text == created.output_text
    row = the_row(stack, raw.headers["x-request-id"])
    assert (row["endpoint"], row["model"], row["prompt_tokens"], row["completion_tokens"]) == (
        "/v1/responses/{id}", MODEL, 0, 0)  # read back, not generated again: not billed twice
    follow_up = client.responses.create(model=MODEL, input="And another?", previous_response_id=created.id, **SAME)
    assert follow_up.previous_response_id == created.id
    assert follow_up.usage.input_tokens > created.usage.input_tokens  # vLLM put the earlier turn in the prompt
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.cancel(created.id)
    assert "Cannot cancel a synchronous response" in str(caught.value)  # vLLM's own answer


# -- Anthropic Messages -------------------------------------------------------------------------------

MESSAGES = [{"role": "user", "content": "Name a GPU."}]
GREEDY = {"temperature": 0.0}  # this anthropic SDK no longer takes temperature as an argument


def test_messages_not_streamed_through_the_anthropic_sdk(stack: Stack) -> None:
    direct = stack.anthropic(direct=True).messages.create(model=MODEL, max_tokens=6, messages=MESSAGES, extra_body=GREEDY)
    before = wait_idle(stack.engine_url)
    raw = stack.anthropic().messages.with_raw_response.create(model=MODEL, max_tokens=6, extra_body=GREEDY,
                                                              messages=MESSAGES)
    via = raw.parse()
    assert via.content == direct.content and via.stop_reason == direct.stop_reason
    row = the_row(stack, raw.headers["x-request-id"])
    assert row["endpoint"] == "/v1/messages" and row["http_status"] == 200
    assert (row["prompt_tokens"], row["completion_tokens"]) == (via.usage.input_tokens, via.usage.output_tokens)
    assert counters_moved(stack, before) == (via.usage.input_tokens, via.usage.output_tokens)


def test_messages_streamed_through_the_anthropic_sdk(stack: Stack) -> None:
    def run(client: anthropic.Anthropic) -> tuple[list[str], str, object, str | None]:
        with client.messages.stream(model=MODEL, max_tokens=6, messages=MESSAGES, extra_body=GREEDY) as stream:
            every = [event.type for event in stream if event.type != "text"]  # "text": the SDK's own, per delta
            kinds = [k for i, k in enumerate(every) if i == 0 or every[i - 1] != k]  # deltas merge by timing
            final = stream.get_final_message()
            return kinds, final.content[0].text, final.usage, stream.response.headers.get("x-request-id")

    direct_kinds, direct_text, _, _ = run(stack.anthropic(direct=True))
    before = wait_idle(stack.engine_url)
    kinds, text, usage, request_id = run(stack.anthropic())
    assert (kinds, text) == (direct_kinds, direct_text) and kinds[-1] == "message_stop"
    row = the_row(stack, request_id)  # type: ignore[arg-type]
    assert row["endpoint"] == "/v1/messages" and row["streamed"] and row["finish_reason"] == "max_tokens"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (usage.input_tokens, usage.output_tokens)  # type: ignore[attr-defined]
    assert counters_moved(stack, before) == (row["prompt_tokens"], row["completion_tokens"])


def test_count_tokens_through_the_anthropic_sdk(stack: Stack) -> None:
    direct = stack.anthropic(direct=True).messages.count_tokens(model=MODEL, messages=MESSAGES)
    via = stack.anthropic().messages.count_tokens(model=MODEL, messages=MESSAGES)
    assert via.input_tokens == direct.input_tokens > 0


def test_messages_errors_are_anthropic_shaped(stack: Stack) -> None:
    with pytest.raises(anthropic.AuthenticationError) as caught:
        stack.anthropic(key="sk-spot-wrong").messages.create(model=MODEL, max_tokens=4, messages=MESSAGES)
    assert caught.value.body == {"type": "error", "error": {"type": "authentication_error",
                                                            "message": "incorrect or revoked API key"}}
    with pytest.raises(anthropic.NotFoundError) as caught:
        stack.anthropic().messages.create(model="no-such-model", max_tokens=4, messages=MESSAGES)
    assert caught.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    response = httpx.post(f"{stack.url}/v1/messages", headers={"x-api-key": stack.key},
                          json={"model": MODEL, "messages": MESSAGES})
    assert response.status_code == 400
    assert response.json() == {"type": "error", "error": {"type": "invalid_request_error",
                                                          "message": "'max_tokens' is required on /v1/messages"}}


# -- tokenize, detokenize, models/{id} ----------------------------------------------------------------

def test_tokenize_and_detokenize_are_the_engines_answers(stack: Stack) -> None:
    headers = {"Authorization": f"Bearer {stack.key}"}
    body = {"model": MODEL, "prompt": "rented GPUs are cheap"}
    via = httpx.post(f"{stack.url}/tokenize", json=body, headers=headers)
    assert via.status_code == 200 and via.content == httpx.post(f"{stack.engine_url}/tokenize", json=body).content
    tokens = via.json()["tokens"]
    back = httpx.post(f"{stack.url}/detokenize", json={"model": MODEL, "tokens": tokens}, headers=headers)
    assert back.json() == httpx.post(f"{stack.engine_url}/detokenize", json={"model": MODEL, "tokens": tokens}).json()
    row = the_row(stack, via.headers["x-request-id"])
    # The tokenizer runs, the model does not: nothing to bill.
    assert (row["endpoint"], row["prompt_tokens"], row["completion_tokens"]) == ("/tokenize", 0, 0)


def test_models_retrieve_through_the_openai_sdk(stack: Stack) -> None:
    assert stack.openai().models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        stack.openai().models.retrieve("gpt-4o")


# -- aborted streams: logged as far as the engine said, never a guess -------------------------------------

def hang_up_after(stack: Stack, path: str, body: dict, marker: bytes, count: int) -> str:
    """Read a stream over a plain socket until ``marker`` has come ``count`` times, then leave."""
    host, port = stack.url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
                     f"Authorization: Bearer {stack.key}\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload)
        received = b""
        while received.count(marker) < count:
            chunk = sock.recv(65536)
            assert chunk, f"the stream ended early: {received[-300:]!r}"
            received += chunk
    found = re.search(rb"x-request-id: (\S+)", received, re.IGNORECASE)
    assert found, received[:300]
    return found[1].decode()


def aborted_row(stack: Stack, path: str, body: dict, marker: bytes) -> tuple[dict, float, float]:
    before = wait_idle(stack.engine_url)
    request_id = hang_up_after(stack, path, body, marker, 3)
    prompt, generated = counters_moved(stack, before)
    return the_row(stack, request_id), prompt, generated


def test_an_aborted_messages_stream_logs_its_input_tokens_and_unknown_output(stack: Stack) -> None:
    body = {"model": MODEL, "max_tokens": 450, "messages": MESSAGES, "stream": True, "ignore_eos": True}
    for _ in range(3):  # on 2 cores vLLM may finish before the client is scheduled to leave: retried
        row, prompt, generated = aborted_row(stack, "/v1/messages", body, b"event: content_block_delta")
        if row["client_aborted"]:
            break
    assert row["client_aborted"] and row["http_status"] == 499 and row["endpoint"] == "/v1/messages"
    assert row["prompt_tokens"] == prompt  # from message_start, as vLLM counted it
    # The Messages stream carries no running output count: unknown, not a guess.
    assert row["completion_tokens"] is None and generated < 450


def test_an_aborted_responses_stream_logs_unknown_tokens(stack: Stack) -> None:
    body = {"model": MODEL, "max_output_tokens": 450, "input": "hi", "stream": True, "ignore_eos": True}
    for _ in range(3):
        row, _, generated = aborted_row(stack, "/v1/responses", body, b"event: response.output_text.delta")
        if row["client_aborted"]:
            break
    assert row["client_aborted"] and row["http_status"] == 499 and row["endpoint"] == "/v1/responses"
    # A Responses stream states its usage only in response.completed, which never came.
    assert (row["prompt_tokens"], row["completion_tokens"]) == (None, None) and generated < 450


# -- embeddings, score, rerank against real vLLM serving the tiny pooling model ---------------------------

EMBED = "tiny-embed"


@pytest.fixture(scope="module")
def pooling(vllm_pooling_engine: str, tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("gateway-routes-pooling")
    key = create_key(Store(home), "routes-pooling").key
    gateway, url = start_gateway(home, {EMBED: vllm_pooling_engine})
    yield Stack(vllm_pooling_engine, url, key, home, gateway)
    gateway.stop()


@pytest.mark.parametrize("inputs", ["rented GPUs", ["one", "two three"], [11, 12, 13]], ids=["string", "list", "token-ids"])
def test_embeddings_through_the_openai_sdk_against_real_vllm(pooling: Stack, inputs: object) -> None:
    direct = pooling.openai(direct=True).embeddings.create(model=EMBED, input=inputs)  # type: ignore[arg-type]
    before = wait_idle(pooling.engine_url)
    raw = pooling.openai().embeddings.with_raw_response.create(model=EMBED, input=inputs)  # type: ignore[arg-type]
    via = raw.parse()
    assert len(via.data) == len(direct.data)
    for mine, theirs in zip(via.data, direct.data, strict=True):
        assert mine.embedding == pytest.approx(theirs.embedding, abs=1e-4)
    assert via.usage.prompt_tokens == direct.usage.prompt_tokens > 0
    row = the_row(pooling, raw.headers["x-request-id"])
    assert (row["endpoint"], row["prompt_tokens"], row["completion_tokens"]) == (
        "/v1/embeddings", via.usage.prompt_tokens, 0)
    assert counters_moved(pooling, before)[0] == via.usage.prompt_tokens


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/score", {"text_1": "what is a GPU", "text_2": ["a graphics card", "a fruit"]}),
    ("/v1/rerank", {"query": "what is a GPU", "documents": ["a graphics card", "a fruit"]}),
    ("/rerank", {"query": "what is a GPU", "documents": ["a graphics card"]}),
    ("/v2/rerank", {"query": "what is a GPU", "documents": ["a graphics card", "a fruit"], "top_n": 1}),
])
def test_score_and_rerank_against_real_vllm(pooling: Stack, path: str, body: dict) -> None:
    body = {"model": EMBED, **body}
    direct = httpx.post(f"{pooling.engine_url}{path}", json=body, timeout=60)
    assert direct.status_code == 200, direct.text
    via = httpx.post(f"{pooling.url}{path}", json=body, headers={"Authorization": f"Bearer {pooling.key}"}, timeout=60)
    assert via.status_code == 200, via.text
    strip = lambda answer: {k: v for k, v in answer.items() if k not in ("id", "created")}  # noqa: E731
    assert strip(via.json()) == strip(direct.json())
    row = the_row(pooling, via.headers["x-request-id"])
    assert (row["endpoint"], row["prompt_tokens"], row["completion_tokens"]) == (
        path, via.json()["usage"]["prompt_tokens"], 0)
