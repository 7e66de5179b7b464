"""`spot sim engine` answers vLLM 0.32's newer routes as vLLM does: Responses, Anthropic
Messages, tokenize, embeddings, score, rerank, audio.

The fast tests compare the simulator with answers captured from a real vLLM
(tests/engines/vllm_routes.json, made by `python -m tests.engines.routes`); the slow ones put
the same requests to a live real vLLM on the CPU (the `vllm_engine` / `vllm_pooling_engine`
session fixtures) and compare answer for answer. Shapes are compared key for key (order
included), errors byte for byte; the random text and vectors are not compared.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import subprocess
import time
import wave
from pathlib import Path

import httpx
import openai
import pytest

from spotinference.errors import InputError
from spotinference.sim.engine import EngineConfig
from tests.engines.routes import CAPTURES, ROUTES, Route, answer_shape, call, sse_events
from tests.servers import SPOT, ServerProcess, clean_env, free_port, start_sim_engine

CAPTURED = json.loads(CAPTURES.read_text())
HELLO = [{"role": "user", "content": "hello"}]


def _start(workdir: Path, model: str, *flags: str, runner: str = "generate") -> tuple[ServerProcess, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(SPOT), "sim", "engine", "--port", str(port), "--model", model, "--seed", "7", *flags]
    server = ServerProcess(command, env=clean_env(workdir / "home", SPOT_SIM_ENGINE_RUNNER=runner),
                           log_path=workdir / f"sim-{port}.log", health_url=f"{url}/health")  # fmt: skip
    return server.start(), url


@pytest.fixture(scope="module")
def chat_sim(tmp_path_factory: pytest.TempPathFactory):
    """tiny-chat with the real model's context length, so length errors read the same."""
    server, url = start_sim_engine(tmp_path_factory.mktemp("sim-chat-512"), extra=["--max-model-len", "512"])
    yield url
    server.stop()


@pytest.fixture(scope="module")
def other_chat_sim(tmp_path_factory: pytest.TempPathFactory):
    """A second engine serving the same model: a second node of the same tier."""
    server, url = start_sim_engine(tmp_path_factory.mktemp("sim-chat-other"), extra=["--max-model-len", "512"])
    yield url
    server.stop()


def _sim_url(route: Route, chat_sim: str, sim_pooling_engine: str) -> str:
    return chat_sim if route.runner == "generate" else sim_pooling_engine


def _assert_same(route: Route, ours: dict, theirs: dict) -> None:
    if route.exact:
        assert ours == theirs, route.name
    else:
        assert answer_shape(ours) == answer_shape(theirs), route.name


# --- against the captured answers -------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES, ids=[r.name for r in ROUTES])
def test_each_route_answers_like_the_captured_vllm(route: Route, chat_sim: str, sim_pooling_engine: str) -> None:
    with httpx.Client(base_url=_sim_url(route, chat_sim, sim_pooling_engine), timeout=30) as client:
        ours = call(client, route)
    _assert_same(route, ours, CAPTURED[route.name])


def test_a_responses_stream_ends_with_response_completed_carrying_the_usage(chat_sim: str) -> None:
    body = {"model": "tiny-chat", "input": "hello", "max_output_tokens": 6, "stream": True}
    with httpx.Client(base_url=chat_sim, timeout=30) as client:
        raw = client.post("/v1/responses", json=body).text
    events = sse_events(raw)  # every byte is in `event:` + `data:` framing; there is no [DONE]
    names = [name for name, _ in events]
    assert names[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]  # fmt: skip
    assert names[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]  # fmt: skip
    assert [data["type"] for _, data in events] == names
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    deltas = "".join(data["delta"] for name, data in events if name == "response.output_text.delta")
    final = events[-1][1]["response"]
    assert final["output"][0]["content"][0]["text"] == deltas
    assert final["usage"]["input_tokens"] == 9 and final["usage"]["output_tokens"] == 6
    assert final["status"] == "incomplete" and final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert all(data["response"]["usage"] is None for name, data in events[:2])


def test_a_messages_stream_puts_input_tokens_first_and_output_tokens_in_message_delta(chat_sim: str) -> None:
    body = {"model": "tiny-chat", "max_tokens": 5, "messages": HELLO, "stream": True}
    with httpx.Client(base_url=chat_sim, timeout=30) as client:
        events = sse_events(client.post("/v1/messages", json=body).text)
    names = [name for name, _ in events]
    assert names[:2] == ["message_start", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[2:-3]) == {"content_block_delta"}
    assert events[0][1]["message"]["usage"] == {"input_tokens": 9, "output_tokens": 0}
    assert events[-2][1]["usage"] == {"input_tokens": 9, "output_tokens": 5}
    assert events[-2][1]["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}


def test_the_openai_sdk_reads_responses_streamed_and_whole(chat_sim: str) -> None:
    client = openai.OpenAI(base_url=f"{chat_sim}/v1", api_key="unused", max_retries=0)
    whole = client.responses.create(model="tiny-chat", input="hello", max_output_tokens=5)
    assert whole.usage.input_tokens == 9 and whole.usage.output_tokens == 5
    assert whole.output_text
    with client.responses.stream(model="tiny-chat", input="hello", max_output_tokens=5) as stream:
        text = "".join(event.delta for event in stream if event.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert final.output_text == text == whole.output_text  # same prompt, same engine seed: same reply
    assert final.usage.output_tokens == 5


def test_a_response_lives_only_on_the_engine_that_made_it(chat_sim: str, other_chat_sim: str) -> None:
    here = openai.OpenAI(base_url=f"{chat_sim}/v1", api_key="unused", max_retries=0)
    elsewhere = openai.OpenAI(base_url=f"{other_chat_sim}/v1", api_key="unused", max_retries=0)
    first = here.responses.create(model="tiny-chat", input="hello", max_output_tokens=4)

    assert here.responses.retrieve(first.id).model_dump() == first.model_dump()
    follow_up = here.responses.create(model="tiny-chat", input="and then?", max_output_tokens=4,
                                      previous_response_id=first.id)  # fmt: skip
    # The earlier turns are in the prompt: more input tokens than the new turn alone.
    alone = here.responses.create(model="tiny-chat", input="and then?", max_output_tokens=4)
    assert follow_up.usage.input_tokens > alone.usage.input_tokens
    assert follow_up.previous_response_id == first.id

    with pytest.raises(openai.NotFoundError) as missing:
        elsewhere.responses.retrieve(first.id)
    assert missing.value.body == {"message": f"Response with id '{first.id}' not found.",
                                  "type": "invalid_request_error", "param": "response_id", "code": 404}  # fmt: skip
    with pytest.raises(openai.NotFoundError):
        elsewhere.responses.create(model="tiny-chat", input="hi", max_output_tokens=2, previous_response_id=first.id)
    with pytest.raises(openai.BadRequestError, match="Cannot cancel a synchronous response"):
        here.responses.cancel(first.id)


def test_store_false_keeps_nothing(chat_sim: str) -> None:
    client = openai.OpenAI(base_url=f"{chat_sim}/v1", api_key="unused", max_retries=0)
    unstored = client.responses.create(model="tiny-chat", input="hello", max_output_tokens=2, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_a_background_response_is_queued_and_can_be_cancelled(tmp_path: Path) -> None:
    server, url = _start(tmp_path, "tiny-chat", "--itl-ms", "50")
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            body = {"model": "tiny-chat", "input": "hello", "max_output_tokens": 400, "background": True}
            queued = client.post("/v1/responses", json=body).json()
            assert queued["status"] == "queued" and queued["output"] == [] and queued["usage"] is None
            cancelled = client.post(f"/v1/responses/{queued['id']}/cancel")
            assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
            assert client.get(f"/v1/responses/{queued['id']}").json()["status"] == "cancelled"

            short = client.post("/v1/responses", json={**body, "max_output_tokens": 2}).json()
            done = short
            for _ in range(200):  # 2 tokens at 50 ms each; polled for at most 10 s
                done = client.get(f"/v1/responses/{short['id']}").json()
                if done["status"] not in ("queued", "in_progress"):
                    break
                time.sleep(0.05)
            assert done["status"] == "incomplete" and done["usage"]["output_tokens"] == 2
            assert client.post(f"/v1/responses/{short['id']}/cancel").status_code == 400
    finally:
        server.stop()


def test_tokenize_counts_what_the_engine_charges(chat_sim: str) -> None:
    with httpx.Client(base_url=chat_sim, timeout=30) as client:
        tokenized = client.post("/tokenize", json={"model": "tiny-chat", "messages": HELLO}).json()
        chat = client.post("/v1/chat/completions", json={"model": "tiny-chat", "messages": HELLO, "max_tokens": 1})
        prompt = client.post("/tokenize", json={"prompt": "hello world, twice"}).json()
        completion = client.post("/v1/completions", json={"prompt": "hello world, twice", "max_tokens": 1})
        counted = client.post("/v1/messages/count_tokens", json={"model": "tiny-chat", "messages": HELLO}).json()
    assert tokenized["count"] == len(tokenized["tokens"]) == chat.json()["usage"]["prompt_tokens"]
    assert prompt["count"] == completion.json()["usage"]["prompt_tokens"]
    assert counted["input_tokens"] == tokenized["count"]


def test_the_openai_sdk_reads_embeddings_in_both_encodings(sim_pooling_engine: str) -> None:
    client = openai.OpenAI(base_url=f"{sim_pooling_engine}/v1", api_key="unused", max_retries=0)
    # The SDK asks for base64 unless told otherwise, and decodes it itself.
    packed = client.embeddings.create(model="tiny-embed", input=["hello", "hello world"])
    floats = client.embeddings.create(model="tiny-embed", input=["hello", "hello world"], encoding_format="float")
    assert [len(d.embedding) for d in packed.data] == [128, 128]
    assert [d.embedding for d in packed.data] == [d.embedding for d in floats.data]  # deterministic, float32
    assert abs(sum(v * v for v in floats.data[0].embedding) - 1.0) < 1e-4  # normalised, as vLLM's are
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > 0
    ids = client.embeddings.create(model="tiny-embed", input=[[5, 6, 7], [5]], encoding_format="float")
    assert ids.usage.prompt_tokens == 4


def test_bytes_encoding_sends_raw_float32_with_its_layout_in_a_header(sim_pooling_engine: str) -> None:
    with httpx.Client(base_url=sim_pooling_engine, timeout=30) as client:
        raw = client.post("/v1/embeddings", json={"input": ["hello", "hi"], "encoding_format": "bytes"})
        floats = client.post("/v1/embeddings", json={"input": ["hello", "hi"]}).json()
    assert raw.headers["content-type"] == "application/octet-stream"
    layout = json.loads(raw.headers["metadata"])
    assert [(d["start"], d["end"], d["shape"]) for d in layout["data"]] == [(0, 512, [128]), (512, 1024, [128])]
    assert list(struct.unpack("<128f", raw.content[:512])) == floats["data"][0]["embedding"]


def test_scores_are_the_cosines_of_the_embeddings(sim_pooling_engine: str) -> None:
    with httpx.Client(base_url=sim_pooling_engine, timeout=30) as client:
        score = client.post("/v1/score", json={"text_1": "hello", "text_2": ["hello", "the cost"]}).json()
        rerank = client.post("/rerank", json={"query": "hello", "documents": ["the cost", "hello"]}).json()
    assert score["data"][0]["score"] == pytest.approx(1.0, abs=1e-6)  # a text against itself
    assert [r["index"] for r in rerank["results"]] == [1, 0]  # best first
    assert rerank["results"][0]["relevance_score"] == pytest.approx(1.0, abs=1e-6)
    assert rerank["usage"] == {"prompt_tokens": score["usage"]["prompt_tokens"], "total_tokens": score["usage"]["prompt_tokens"]}


def test_pooling_prompt_tokens_reach_the_metrics(sim_pooling_engine: str) -> None:
    def prompt_total(client: httpx.Client) -> float:
        for line in client.get("/metrics").text.splitlines():
            if line.startswith("vllm:prompt_tokens_total{"):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError("no vllm:prompt_tokens_total")

    with httpx.Client(base_url=sim_pooling_engine, timeout=30) as client:
        before = prompt_total(client)
        used = client.post("/v1/embeddings", json={"input": "count these tokens"}).json()["usage"]["prompt_tokens"]
        assert prompt_total(client) - before == used


def _wav(seconds: float) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(b"\0\0" * int(16000 * seconds))
    return out.getvalue()


def test_a_speech_model_transcribes_multipart_uploads(tmp_path: Path) -> None:
    # Shapes from vLLM's source, not a capture: no speech model runs on these CPUs (see the doc).
    server, url = _start(tmp_path, "tiny-whisper", runner="transcription")
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        transcript = client.audio.transcriptions.create(model="tiny-whisper", file=("a.wav", _wav(2.5)))
        again = client.audio.transcriptions.create(model="tiny-whisper", file=("a.wav", _wav(2.5)))
        assert transcript.text and transcript.text == again.text
        assert transcript.usage.type == "duration" and transcript.usage.seconds == 3
        translation = client.audio.translations.create(model="tiny-whisper", file=("a.wav", _wav(1.0)))
        assert translation.text
        with pytest.raises(openai.NotFoundError, match="does not exist"):
            client.audio.transcriptions.create(model="nope", file=("a.wav", _wav(1.0)))
        with httpx.Client(base_url=url, timeout=30) as raw:
            assert raw.post("/v1/chat/completions", json={"messages": HELLO}).status_code == 404
    finally:
        server.stop()


def test_an_unknown_runner_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="must be one of generate, pooling, transcription"):
        EngineConfig(model="m", runner="embed")
    result = subprocess.run([str(SPOT), "sim", "engine", "--model", "m", "--port", "0"], capture_output=True,
                            text=True, env=clean_env(tmp_path, SPOT_SIM_ENGINE_RUNNER="embed"), timeout=60)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: the engine runner (--runner, or SPOT_SIM_ENGINE_RUNNER) must be one of generate, pooling, "
        "transcription, got 'embed'"
    ]
    flag = subprocess.run([str(SPOT), "sim", "engine", "--model", "m", "--port", "0", "--runner", "embed"],
                          capture_output=True, text=True, env=clean_env(tmp_path), timeout=60)
    assert flag.returncode == 2 and "got 'embed'" in flag.stderr and len(flag.stderr.strip().splitlines()) == 1


def test_the_runner_flag_serves_a_pooling_model(tmp_path: Path) -> None:
    port = free_port()
    server = subprocess.Popen([str(SPOT), "sim", "engine", "--model", "tiny-embed", "--port", str(port),
                               "--runner", "pooling"], env=clean_env(tmp_path), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        answer = httpx.post(f"{url}/v1/embeddings", json={"model": "tiny-embed", "input": "hello"}, timeout=10)
        assert answer.status_code == 200 and answer.json()["usage"]["prompt_tokens"] > 0
        assert httpx.post(f"{url}/v1/chat/completions", json={"model": "tiny-embed", "messages": HELLO},
                          timeout=10).status_code == 404
    finally:
        server.terminate()
        server.wait(timeout=10)


# --- against a live real vLLM (slow: the session starts both real engines once) -------------


@pytest.mark.slow
@pytest.mark.parametrize("route", ROUTES, ids=[r.name for r in ROUTES])
def test_the_sim_answers_each_route_like_real_vllm(
    route: Route, chat_sim: str, sim_pooling_engine: str, vllm_engine: str, vllm_pooling_engine: str
) -> None:
    real_url = vllm_engine if route.runner == "generate" else vllm_pooling_engine
    with httpx.Client(base_url=real_url, timeout=120) as client:
        theirs = call(client, route)
    with httpx.Client(base_url=_sim_url(route, chat_sim, sim_pooling_engine), timeout=30) as client:
        ours = call(client, route)
    _assert_same(route, ours, theirs)


@pytest.mark.slow
def test_stored_responses_behave_like_real_vllm(chat_sim: str, vllm_engine: str) -> None:
    """GET, cancel and previous_response_id on a stored response (vLLM started with
    VLLM_ENABLE_RESPONSES_API_STORE=1, as the harness starts it)."""

    def exchanges(url: str) -> list[dict]:
        with httpx.Client(base_url=url, timeout=120) as client:
            created = client.post("/v1/responses", json={"model": "tiny-chat", "input": "hello", "max_output_tokens": 3})
            rid = created.json()["id"]
            answers = [created, client.get(f"/v1/responses/{rid}"), client.post(f"/v1/responses/{rid}/cancel")]
            body = {"model": "tiny-chat", "input": "more", "max_output_tokens": 3, "previous_response_id": rid}
            answers.append(client.post("/v1/responses", json=body))
            return [
                {"status": r.status_code, "content_type": r.headers["content-type"], "content_length": True,
                 "body": r.text}  # fmt: skip
                for r in answers
            ]

    ours, theirs = exchanges(chat_sim), exchanges(vllm_engine)
    assert [answer_shape(a) for a in ours] == [answer_shape(a) for a in theirs]
    assert ours[2]["body"] == theirs[2]["body"]  # the cancel refusal, word for word
    assert json.loads(ours[1]["body"]) == json.loads(ours[0]["body"])  # GET returns what POST did


@pytest.mark.slow
def test_real_vllm_embeddings_through_the_openai_sdk(vllm_pooling_engine: str) -> None:
    """The pooling fixture serves what the gateway's contract tests need: the SDK's default
    base64 embeddings, with vLLM's prompt-token usage."""
    client = openai.OpenAI(base_url=f"{vllm_pooling_engine}/v1", api_key="unused", max_retries=0)
    result = client.embeddings.create(model="tiny-embed", input=["hello", "hello world"])
    assert [len(d.embedding) for d in result.data] == [128, 128]
    assert result.usage.prompt_tokens == 5  # 2 + 3 with the tiny tokenizer
    raw = base64.b64decode(
        httpx.post(f"{vllm_pooling_engine}/v1/embeddings",
                   json={"input": "hello", "encoding_format": "base64"}, timeout=60).json()["data"][0]["embedding"]
    )  # fmt: skip
    assert len(raw) == 128 * 4


def test_an_api_key_guards_the_same_paths_as_vllms(tmp_path: Path) -> None:
    """vLLM's --api-key guards /v1, /v2, /inference and /cohere; /tokenize, /score and /rerank stay open."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = ServerProcess(
        [str(SPOT), "sim", "engine", "--port", str(port), "--model", "tiny-embed"],
        env=clean_env(tmp_path / "home", SPOT_SIM_ENGINE_RUNNER="pooling", VLLM_API_KEY="sekret"),
        log_path=tmp_path / "sim.log", health_url=f"{url}/health",
    ).start()  # fmt: skip
    try:
        rerank = {"query": "q", "documents": ["d"]}
        with httpx.Client(base_url=url, timeout=30) as client:
            assert client.post("/v1/embeddings", json={"input": "x"}).status_code == 401
            assert client.post("/v2/rerank", json=rerank).status_code == 401
            assert client.post("/rerank", json=rerank).status_code == 200
            assert client.post("/tokenize", json={"prompt": "x"}).status_code == 200
            keyed = client.post("/v2/rerank", json=rerank, headers={"Authorization": "Bearer sekret"})
            assert keyed.status_code == 200
    finally:
        server.stop()


def _counter(metrics_text: str, name: str) -> float:
    for line in metrics_text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name}")


@pytest.mark.parametrize(
    ("path", "body", "delta_event"),
    [
        ("/v1/responses", {"model": "tiny-chat", "input": "hello", "max_output_tokens": 500, "stream": True},
         "response.output_text.delta"),
        ("/v1/messages", {"model": "tiny-chat", "max_tokens": 500, "messages": HELLO, "stream": True},
         "content_block_delta"),
    ],
    ids=["responses", "messages"],
)  # fmt: skip
def test_a_client_leaving_a_stream_stops_its_generation(tmp_path: Path, path: str, body: dict, delta_event: str) -> None:
    # Replies that would run to 500 tokens at 20 ms each, unless the client leaves.
    server, url = _start(tmp_path, "tiny-chat", "--itl-ms", "20", "--reply-tokens-min", "1000",
                         "--reply-tokens-max", "1000")  # fmt: skip
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            seen = 0
            with client.stream("POST", path, json=body) as response:
                for line in response.iter_lines():
                    if line == f"event: {delta_event}":
                        seen += 1
                        if seen == 5:
                            break  # closes the connection mid-stream
            for _ in range(500):  # polled for at most 10 s
                metrics = client.get("/metrics").text
                if _counter(metrics, "vllm:num_requests_running") == 0:
                    break
                time.sleep(0.02)
            assert _counter(metrics, "vllm:num_requests_running") == 0
            assert 5 <= _counter(metrics, "vllm:generation_tokens_total") < 500
    finally:
        server.stop()


def test_the_anthropic_sdk_reads_messages_streamed_and_whole(chat_sim: str) -> None:
    anthropic = pytest.importorskip("anthropic", reason="the official anthropic SDK is not installed")
    client = anthropic.Anthropic(base_url=chat_sim, api_key="unused", max_retries=0)
    whole = client.messages.create(model="tiny-chat", max_tokens=4, messages=HELLO)
    assert (whole.usage.input_tokens, whole.usage.output_tokens, whole.stop_reason) == (9, 4, "max_tokens")
    with client.messages.stream(model="tiny-chat", max_tokens=4, messages=HELLO) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == final.content[0].text == whole.content[0].text
    assert (final.usage.input_tokens, final.usage.output_tokens) == (9, 4)
    assert client.messages.count_tokens(model="tiny-chat", messages=HELLO).input_tokens == 9
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="nope", max_tokens=4, messages=HELLO)
    assert missing.value.body == {"type": "error", "error": {"type": "NotFoundError",
                                  "message": "The model `nope` does not exist. Valid aliases: tiny-chat."}}  # fmt: skip
