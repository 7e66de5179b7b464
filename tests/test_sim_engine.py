"""`spot sim engine`: a real server that a client cannot tell from vLLM 0.32.

Most tests talk to one engine process over HTTP, with the official openai SDK where a user
would; the timing model is tested in process on a virtual clock, so nothing here asserts on
wall-clock time.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from spotinference.errors import InputError, SpotError
from spotinference.sim import text
from spotinference.sim.engine import EngineConfig, SimEngine
from spotinference.sim.timing import Timebase, TimingModel

SPOT = Path(sys.executable).with_name("spot")
MODEL = "tiny-chat"
MAX_MODEL_LEN = 512
HELLO = [{"role": "user", "content": "Say hello."}]


# --- a real engine process ----------------------------------------------------------------


@functools.cache
def _spot_has_sim_engine() -> bool:
    probe = subprocess.run([str(SPOT), "sim", "engine", "--help"], capture_output=True, text=True)
    return probe.returncode == 0 and "--ttft-ms" in probe.stdout


def _engine_command(*args: str) -> list[str]:
    """`spot sim engine`, or the same Typer command run directly until `spot` registers it."""
    if _spot_has_sim_engine():
        return [str(SPOT), "sim", "engine", *args]
    runner = "from spotinference_cli.commands.sim import app; app(prog_name='spot sim')"
    return [sys.executable, "-c", runner, "engine", *args]


class Engine:
    """An engine process; ``url`` is known once it says it is serving."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            _engine_command(*args), stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._drain, daemon=True).start()
        self.url = ""

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)

    def wait_ready(self, timeout_s: float = 30.0) -> str:
        deadline = time.monotonic() + timeout_s
        seen = []
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            seen.append(line)
            if match := re.search(r"serving \S+ on (http://\S+)", line):
                self.url = match.group(1)
                return self.url
        self.stop()
        raise RuntimeError("engine did not start: " + "".join(seen))

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture(scope="module")
def engine() -> Iterator[str]:
    proc = Engine("--port", "0", "--model", MODEL, "--ttft-ms", "5", "--itl-ms", "2", "--seed", "7",
                  "--max-model-len", str(MAX_MODEL_LEN))  # fmt: skip
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


@pytest.fixture
def client(engine: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{engine}/v1", api_key="unused", max_retries=0) as sdk:
        yield sdk


def metrics(url: str) -> dict[str, float]:
    """The engine's Prometheus samples, keyed by name and labels as printed."""
    samples = {}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            samples[key] = float(value)
    return samples


def counter(samples: dict[str, float], name: str, **labels: str) -> float:
    wanted = {"engine": "0", "model_name": MODEL, **labels}
    label_text = ",".join(f'{k}="{v}"' for k, v in sorted(wanted.items()))
    return samples[f"{name}{{{label_text}}}"]


# --- start-up -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_port_stays_closed_while_the_model_loads_then_health_is_200() -> None:
    port = _free_port()
    proc = Engine("--port", str(port), "--model", MODEL, "--load-seconds", "1")
    try:
        refused = 0
        while proc.proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except ConnectionRefusedError:
                refused += 1
                time.sleep(0.05)
        assert refused > 0, "the port answered before the load time was over"
        proc.wait_ready()
        response = httpx.get(f"http://127.0.0.1:{port}/health")
        assert response.status_code == 200 and response.content == b""
    finally:
        proc.stop()


def test_a_port_in_use_is_a_one_line_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(_engine_command("--port", str(port), "--model", MODEL), capture_output=True,
                                text=True, timeout=30)  # fmt: skip
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


# --- the OpenAI API through the official SDK ----------------------------------------------


def test_models_lists_the_served_model(client: openai.OpenAI, engine: str) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    assert models[0].owned_by == "vllm"
    assert httpx.get(f"{engine}/v1/models").json()["data"][0]["max_model_len"] == MAX_MODEL_LEN


def test_a_streamed_chat_parses_in_the_sdk_and_its_usage_adds_up(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=40, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    token_chunks = [c for c in chunks[1:] if c.choices]
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    usage = usage_chunk.usage
    # One chunk per generated token (an EOS arrives as an empty last chunk, counted all the same).
    assert usage.completion_tokens == len(token_chunks)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    finish = token_chunks[-1].choices[0].finish_reason
    assert finish in ("stop", "length")
    assert all(c.choices[0].finish_reason is None for c in token_chunks[:-1])
    reply = "".join(c.choices[0].delta.content or "" for c in token_chunks)
    assert text.count_tokens(reply) == usage.completion_tokens - (1 if finish == "stop" else 0)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")


def test_replies_are_deterministic_and_streamed_equals_whole(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=30)
    again = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=30)
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=30, stream=True)
        if c.choices
    )
    assert whole.choices[0].message.content == again.choices[0].message.content == streamed
    assert whole.usage == again.usage
    other = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Bye."}], max_tokens=30)
    assert other.choices[0].message.content != whole.choices[0].message.content


def test_ignore_eos_generates_exactly_max_tokens(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_completion_tokens=200, extra_body={"ignore_eos": True}
    )
    assert reply.usage is not None and reply.usage.completion_tokens == 200
    assert reply.choices[0].finish_reason == "length"
    assert text.count_tokens(reply.choices[0].message.content or "") == 200


def test_without_ignore_eos_a_reply_may_stop_before_max_tokens(client: openai.OpenAI) -> None:
    replies = [
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"q{i}"}], max_tokens=300)
        for i in range(5)
    ]
    for reply in replies:
        assert reply.usage is not None
        if reply.choices[0].finish_reason == "stop":
            assert reply.usage.completion_tokens < 300
        else:
            assert reply.usage.completion_tokens == 300
    assert any(r.choices[0].finish_reason == "stop" for r in replies)  # default replies are 16..128 tokens


def test_max_tokens_past_the_context_is_clamped_as_vllm_does(client: openai.OpenAI) -> None:
    prompt = "w " * 499  # and a BOS: 500 tokens
    reply = client.completions.create(model=MODEL, prompt=prompt, max_tokens=100, extra_body={"ignore_eos": True})
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (500, MAX_MODEL_LEN - 500)
    assert reply.choices[0].finish_reason == "length"


def test_continuous_usage_puts_the_running_total_on_every_chunk(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=HELLO, max_tokens=12, stream=True,
            stream_options={"include_usage": True, "continuous_usage_stats": True},
        )  # fmt: skip
    )
    running = [c.usage.completion_tokens for c in chunks if c.choices and c.usage is not None]
    assert len(running) == len(chunks) - 1  # every chunk but the usage-only one
    assert running == list(range(len(running)))  # 0 on the role chunk, then one more per token
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == running[-1]


def test_completions_stream_and_whole(client: openai.OpenAI) -> None:
    whole = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=20)
    assert whole.object == "text_completion"
    assert whole.usage is not None and whole.usage.prompt_tokens == text.count_tokens("Once upon a time") + 1  # BOS
    chunks = list(
        client.completions.create(
            model=MODEL, prompt="Once upon a time", max_tokens=20, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage == whole.usage
    # The completions default is 16 tokens, as in vLLM.
    default = client.completions.create(model=MODEL, prompt="x", extra_body={"ignore_eos": True})
    assert default.usage is not None and default.usage.completion_tokens == 16


def test_n_choices_and_prompt_lists(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, n=3,
                                           extra_body={"ignore_eos": True})  # fmt: skip
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert reply.usage is not None and reply.usage.completion_tokens == 24
    batch = client.completions.create(model=MODEL, prompt=["a b", "c d e"], max_tokens=4, n=2,
                                      extra_body={"ignore_eos": True})  # fmt: skip
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    assert batch.usage is not None and batch.usage.prompt_tokens == (1 + 2) + (1 + 3)  # each with a BOS
    assert batch.usage.completion_tokens == 16


# --- metrics --------------------------------------------------------------------------------


def test_metrics_counters_increase_by_exactly_the_tokens_served(client: openai.OpenAI, engine: str) -> None:
    before = metrics(engine)
    whole = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=25)
    streamed = list(client.completions.create(model=MODEL, prompt="count me", max_tokens=10, stream=True,
                                              stream_options={"include_usage": True}))  # fmt: skip
    after = metrics(engine)
    served = [whole.usage, streamed[-1].usage]
    assert all(u is not None for u in served)
    prompt = sum(u.prompt_tokens for u in served if u)
    completion = sum(u.completion_tokens for u in served if u)
    assert counter(after, "vllm:prompt_tokens_total") - counter(before, "vllm:prompt_tokens_total") == prompt
    generated = counter(after, "vllm:generation_tokens_total") - counter(before, "vllm:generation_tokens_total")
    assert generated == completion
    finished = sum(
        counter(after, "vllm:request_success_total", finished_reason=r)
        - counter(before, "vllm:request_success_total", finished_reason=r)
        for r in ("stop", "length")
    )
    assert finished == 2
    ttft = "vllm:time_to_first_token_seconds_count"
    assert counter(after, ttft) - counter(before, ttft) == 2
    assert counter(after, "vllm:num_requests_running") == 0
    assert counter(after, "vllm:num_requests_waiting") == 0


def test_a_client_disconnect_stops_generation(engine: str) -> None:
    before = metrics(engine)
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 500, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}  # fmt: skip
    seen = 0
    with httpx.Client(timeout=30) as http, http.stream("POST", f"{engine}/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                seen = json.loads(line[6:])["usage"]["completion_tokens"]
                if seen >= 5:
                    break  # closes the connection mid-stream
    deadline = time.monotonic() + 10
    while counter(metrics(engine), "vllm:num_requests_running") != 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    after = metrics(engine)
    assert counter(after, "vllm:num_requests_running") == 0
    generated = counter(after, "vllm:generation_tokens_total") - counter(before, "vllm:generation_tokens_total")
    assert seen <= generated < 500  # what was generated counts; generation stopped
    # As in vLLM, an aborted request is not a finished one.
    for reason in ("stop", "length", "abort"):
        name = "vllm:request_success_total"
        assert counter(after, name, finished_reason=reason) == counter(before, name, finished_reason=reason)
    # The engine goes on serving.
    assert httpx.get(f"{engine}/health").status_code == 200


# --- bad input, answered as vLLM answers it ------------------------------------------------


def _post(engine: str, path: str, content: bytes | str, content_type: str = "application/json") -> httpx.Response:
    return httpx.post(f"{engine}{path}", content=content, headers={"content-type": content_type})


@pytest.mark.parametrize(
    ("body", "status", "err_type", "param"),
    [
        ('{"messages": [}', 400, "Bad Request", "body.14"),
        ('{"model": "tiny-chat"}', 400, "Bad Request", "body.messages"),
        ('{"messages": "hi"}', 400, "Bad Request", "body.messages"),
        ('{"messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"}', 400, "Bad Request",
         "body.max_tokens"),
        ('{"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}', 400, "BadRequestError", "max_tokens"),
        ('{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 513}', 400, "BadRequestError", "max_tokens"),
        ('{"messages": [{"role": "user", "content": "hi"}], "stream_options": {"include_usage": true}}', 400,
         "BadRequestError", "stream_options"),
        ('{"model": "nope", "messages": [{"role": "user", "content": "hi"}]}', 404, "NotFoundError", "model"),
    ],
)  # fmt: skip
def test_bad_chat_requests_get_vllms_status_and_error_shape(engine: str, body: str, status: int, err_type: str,
                                                            param: str) -> None:  # fmt: skip
    response = _post(engine, "/v1/chat/completions", body)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert list(error) == ["message", "type", "param", "code"]
    assert (error["type"], error["param"], error["code"]) == (err_type, param, status)


def test_exact_vllm_error_messages(engine: str) -> None:
    # Captured from vLLM 0.32 (CPU build) with --max-model-len 512.
    too_many = _post(engine, "/v1/chat/completions", '{"messages": [{"role": "user", "content": "x"}], "max_tokens": 600}')
    assert too_many.json()["error"]["message"] == (
        "max_tokens=600 cannot be greater than max_model_len=512. Please request fewer output tokens. "
        "(parameter=max_tokens, value=600)"
    )
    missing = _post(engine, "/v1/chat/completions", '{"model":"tiny-chat"}')
    assert missing.json()["error"]["message"] == (
        "1 validation error:\n  {'type': 'missing', 'loc': 'body.messages', 'msg': 'Field required', "
        "'input': '<dict of 1 items>'}"
    )
    unknown = _post(engine, "/v1/chat/completions", '{"model":"nope","messages":[]}')
    assert unknown.content == (
        b'{"error":{"message":"The model `nope` does not exist. Valid aliases: tiny-chat.",'
        b'"type":"NotFoundError","param":"model","code":404}}'
    )
    not_json = _post(engine, "/v1/chat/completions", "{}", content_type="text/plain")
    assert not_json.json()["error"]["message"] == (
        "1 validation error:\n  Unsupported Media Type: Only 'application/json' is allowed"
    )


def test_a_prompt_longer_than_the_context_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model=MODEL, prompt="word " * 600, max_tokens=5)
    assert refused.value.status_code == 400
    assert refused.value.body["message"] == (  # type: ignore[index]
        "This model's maximum context length is 512 tokens. However, your prompt contains at least 513 input "
        "tokens, which exceeds this limit even without any output tokens. Please reduce the length of the input "
        "prompt. (parameter=input_tokens, value=513)"
    )


def test_the_sdk_raises_its_own_error_types(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=0)


# --- the wire format ------------------------------------------------------------------------


def _keys(raw: str) -> list[str]:
    return [k for k, _ in json.loads(raw, object_pairs_hook=lambda pairs: pairs)]


def test_sse_framing_and_key_order_match_vllm(engine: str) -> None:
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 3, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    response = httpx.post(f"{engine}/v1/chat/completions", json=body)
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    raw = response.text
    assert raw.endswith("data: [DONE]\n\n")
    events = raw.split("\n\n")[:-1]
    assert all(e.startswith("data: ") and "\n" not in e for e in events)
    payloads = [e[len("data: "):] for e in events[:-1]]
    assert all(", " not in p and '": ' not in p for p in payloads)  # compact, like pydantic
    first, *tokens, usage = payloads
    assert _keys(first) == ["id", "object", "created", "model", "choices", "prompt_token_ids", "prompt_text"]
    assert json.loads(first)["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len(tokens) == 3
    assert all(_keys(t) == ["id", "object", "created", "model", "choices"] for t in tokens)
    assert [list(json.loads(t)["choices"][0]) for t in tokens] == [
        ["index", "delta", "logprobs", "finish_reason", "token_ids"],
        ["index", "delta", "logprobs", "finish_reason", "token_ids"],
        ["index", "delta", "logprobs", "finish_reason", "stop_reason", "token_ids"],
    ]
    assert _keys(usage) == ["id", "object", "created", "model", "choices", "usage", "system_fingerprint"]
    assert list(json.loads(usage)["usage"]) == ["prompt_tokens", "total_tokens", "completion_tokens"]


def test_without_include_usage_the_fingerprint_rides_on_the_last_chunk(engine: str) -> None:
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 2, "stream": True, "ignore_eos": True}
    events = httpx.post(f"{engine}/v1/completions", json=body).text.split("\n\n")[:-1]
    assert events[-1] == "data: [DONE]"
    last = json.loads(events[-2][len("data: "):])
    assert last["choices"][0]["finish_reason"] == "length"
    assert last["system_fingerprint"].startswith("vllm-0.32.0-")
    assert "usage" not in last


def test_an_x_request_id_header_names_the_completion(engine: str) -> None:
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 1}
    reply = httpx.post(f"{engine}/v1/completions", json=body, headers={"x-request-id": "trace-42"})
    assert reply.json()["id"] == "cmpl-trace-42"


def test_health_version_and_unknown_routes(engine: str) -> None:
    assert httpx.get(f"{engine}/version").json() == {"version": "0.32.0"}
    missing = httpx.get(f"{engine}/nothing")
    assert (missing.status_code, missing.json()) == (404, {"detail": "Not Found"})
    wrong = httpx.get(f"{engine}/v1/chat/completions")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"


# --- the timing model, in process on a virtual clock -----------------------------------------


class VirtualTime:
    """A clock that jumps to the next sleeper's deadline once every task is blocked."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._count = 0

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay_s: float) -> None:
        future = asyncio.get_running_loop().create_future()
        self._count += 1
        heapq.heappush(self._sleepers, (self.now + max(delay_s, 0.0), self._count, future))
        await future

    async def run(self, *coros) -> list:  # noqa: ANN002
        tasks = [asyncio.ensure_future(c) for c in coros]
        while not all(t.done() for t in tasks):
            for _ in range(20):  # let every runnable task reach its next sleep
                await asyncio.sleep(0)
            if self._sleepers:
                self.now, _, future = heapq.heappop(self._sleepers)
                future.set_result(None)
        return [t.result() for t in tasks]


async def _call(app: SimEngine, path: str, body: dict) -> tuple[int, bytes]:
    raw = json.dumps(body).encode()
    sent: list[dict] = []
    received = asyncio.Event()

    async def receive() -> dict:
        if not received.is_set():
            received.set()
            return {"type": "http.request", "body": raw, "more_body": False}
        await asyncio.Event().wait()  # the client never leaves
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": [(b"content-type", b"application/json")]}
    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_timing_model_on_a_virtual_clock() -> None:
    timing = TimingModel(ttft_ms=20, itl_ms=5, prefill_ms_per_token=1, slowdown_per_request=0.5)
    virtual = VirtualTime()
    app = SimEngine(EngineConfig(model=MODEL, timing=timing), Timebase(clock=virtual.clock, sleep=virtual.sleep))
    body = {"prompt": "one two three", "max_tokens": 11, "ignore_eos": True}  # 3 tokens and a BOS

    status, _ = asyncio.run(virtual.run(_call(app, "/v1/completions", body)))[0]
    assert status == 200
    # Alone: 20 ms + 4 prompt tokens × 1 ms to the first token, then 10 × 5 ms.
    assert app.metrics.ttft.total == pytest.approx(0.024)
    assert app.metrics.e2e.total == pytest.approx(0.024 + 10 * 0.005)

    # Two at once: each step costs 1.5 × while both run. The first prefills alone (24 ms) and
    # decodes beside the second (10 × 7.5 ms); the second prefills beside it (36 ms), decodes
    # 9 steps beside it and its last one alone.
    app = SimEngine(EngineConfig(model=MODEL, timing=timing), Timebase(clock=virtual.clock, sleep=virtual.sleep))
    virtual.now = 0.0
    asyncio.run(virtual.run(_call(app, "/v1/completions", body), _call(app, "/v1/completions", body)))
    assert app.metrics.e2e.total == pytest.approx((0.024 + 10 * 0.0075) + (0.036 + 9 * 0.0075 + 0.005))
    assert app.metrics.generation_tokens == 22


def test_requests_past_max_num_seqs_wait_their_turn() -> None:
    virtual = VirtualTime()
    app = SimEngine(
        EngineConfig(model=MODEL, timing=TimingModel(ttft_ms=10, itl_ms=10), max_num_seqs=1),
        Timebase(clock=virtual.clock, sleep=virtual.sleep),
    )
    body = {"prompt": "x", "max_tokens": 5, "ignore_eos": True}
    observed: list[tuple[int, int]] = []

    async def watch() -> None:
        while app.metrics.generation_tokens < 10:
            observed.append((app.scheduler.running, app.scheduler.waiting))
            await virtual.sleep(0.005)

    asyncio.run(virtual.run(_call(app, "/v1/completions", body), _call(app, "/v1/completions", body), watch()))
    assert (1, 1) in observed  # one running, one waiting
    assert app.metrics.queue_time.total == pytest.approx(0.05)  # the second waited for 10 + 4 × 10 ms
    assert (app.scheduler.running, app.scheduler.waiting) == (0, 0)


def test_bad_engine_settings_are_input_errors() -> None:
    with pytest.raises(InputError):
        TimingModel(itl_ms=-1)
    with pytest.raises(InputError):
        EngineConfig(model=MODEL, reply_tokens_min=10, reply_tokens_max=5)
    assert issubclass(InputError, SpotError)
