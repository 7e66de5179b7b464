"""The simulated engine: a raw ASGI app that answers like vLLM's OpenAI server, and its runner.

Routes, as vLLM 0.32 serves them for the engine's runner (``EngineConfig.runner``):

* every runner: ``GET /health``, ``/metrics``, ``/version``, ``/v1/models``; ``POST /tokenize``,
  ``/detokenize``;
* ``generate``: ``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/responses`` (and
  ``GET /v1/responses/{id}``, ``POST /v1/responses/{id}/cancel``), ``/v1/messages``,
  ``/v1/messages/count_tokens``;
* ``pooling`` (an embedding model): ``POST /v1/embeddings``, ``/score``, ``/v1/score``,
  ``/rerank``, ``/v1/rerank``, ``/v2/rerank``;
* ``transcription`` (a speech model): ``POST /v1/audio/transcriptions``, ``/translations``.

A route the runner does not serve is a plain 404, as in vLLM (whose router never mounts it).
Tokens come from ``text``, their timing from ``timing``, their bytes from ``wire`` (and
``responses``, ``anthropic``, ``pooling``, ``audio`` for those APIs); ``protocol`` reads
requests and ``validation`` refuses bad ones. The routes without a token stream (tokenizer,
pooling, audio) are in ``oneshot_routes``; ``asgi`` holds the HTTP plumbing they share.

Raw ASGI rather than a framework because the engine must never be what a gateway benchmark
measures: per token, the work is one sleep, one f-string and one ``send``.

Run it with ``serve()`` (async) or ``run()`` (``spot sim engine`` on the command line); the
port opens only after ``load_seconds``, as vLLM's does after loading the weights.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError, SpotError
from . import anthropic, protocol, responses, text, wire
from .asgi import JSON as _JSON
from .asgi import METHOD_NOT_ALLOWED as _METHOD_NOT_ALLOWED
from .asgi import NOT_FOUND as _NOT_FOUND
from .asgi import SSE as _SSE
from .asgi import UNAUTHORIZED as _UNAUTHORIZED
from .asgi import Receive, Scope, Send
from .asgi import abort_on_disconnect as _abort_on_disconnect
from .asgi import random_id as _random_id
from .asgi import read_body as _read_body
from .asgi import read_json
from .asgi import respond as _respond
from .asgi import send_chunk as _send_chunk
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import EngineMetrics
from .oneshot_routes import OneShotRoutes
from .scheduler import Scheduler
from .timing import Timebase, TimingModel
from .validation import ApiError, not_found_model, parse_json_body

VLLM_VERSION = "0.32.0"  # the vLLM whose server this one imitates

RUNNERS = ("generate", "pooling", "transcription")
# The path prefixes vLLM's --api-key middleware guards (entrypoints/serve/middleware/authenticate.py).
GUARDED_PATHS = ("/v1", "/v2", "/inference", "/cohere")

# POST routes by runner; the handler's name on SimEngine.
_COMMON_POSTS = {"/tokenize": "_tokenize", "/detokenize": "_detokenize"}
_RUNNER_POSTS = {
    "generate": {
        "/v1/chat/completions": "_chat",
        "/v1/completions": "_completion",
        "/v1/responses": "_responses",
        "/v1/messages": "_messages",
        "/v1/messages/count_tokens": "_count_tokens",
    },
    "pooling": {
        "/v1/embeddings": "_embeddings",
        "/score": "_score",
        "/v1/score": "_score",
        "/rerank": "_rerank",
        "/v1/rerank": "_rerank",
        "/v2/rerank": "_rerank",
    },
    "transcription": {
        "/v1/audio/transcriptions": "_transcription",
        "/v1/audio/translations": "_translation",
    },
}
_RESPONSES_PREFIX = "/v1/responses/"
MAX_STORED_RESPONSES = 100_000


@dataclass(frozen=True, slots=True)
class EngineConfig:
    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    timing: TimingModel = field(default_factory=TimingModel)
    max_model_len: int = 2048
    seed: int = 0
    # Where a reply would end on its own (EOS), unless max_tokens or ignore_eos says otherwise.
    reply_tokens_min: int = 16
    reply_tokens_max: int = 128
    max_num_seqs: int = 256
    kv_cache_tokens: int = 65536
    # Like `vllm serve --api-key` (which also reads VLLM_API_KEY): requests then need
    # "Authorization: Bearer <key>" on the paths vLLM guards (GUARDED_PATHS); /health, /metrics,
    # /tokenize, /score and /rerank stay open, as in vLLM.
    api_key: str | None = field(default_factory=lambda: os.environ.get("VLLM_API_KEY") or None)
    # What the served model is, as vLLM's --runner says: "generate" (a chat model), "pooling"
    # (an embedding model: embeddings, score, rerank) or "transcription" (a speech model).
    # SPOT_SIM_ENGINE_RUNNER sets it where the command line has no flag for it.
    runner: str = field(default_factory=lambda: os.environ.get("SPOT_SIM_ENGINE_RUNNER") or "generate")

    def __post_init__(self) -> None:
        if not self.model:
            raise InputError("the model name must not be empty")
        if self.runner not in RUNNERS:
            raise InputError(
                f"the engine runner (--runner, or SPOT_SIM_ENGINE_RUNNER) must be one of {', '.join(RUNNERS)}, got {self.runner!r}"
            )
        if self.max_model_len < 1:
            raise InputError(f"max_model_len must be 1 or more, got {self.max_model_len}")
        if not 1 <= self.reply_tokens_min <= self.reply_tokens_max:
            raise InputError(
                f"reply length must satisfy 1 <= min <= max, got {self.reply_tokens_min}..{self.reply_tokens_max}"
            )


@dataclass(slots=True)
class _Sequence:
    """One choice of one prompt: a vLLM (child) request."""

    index: int  # the choice index on the wire
    prompt_tokens: int
    reply: text.Reply
    length: int  # tokens it will generate, EOS included
    finish_reason: str  # "stop" (EOS, its token has no text) or "length"
    generated: int = 0
    queued_s: float = 0.0


class SimEngine(OneShotRoutes):
    """The ASGI application. One instance holds the engine's whole state."""

    def __init__(self, config: EngineConfig, timebase: Timebase | None = None) -> None:
        self.config = config
        self.timing = config.timing
        self.timebase = timebase or Timebase()
        self.vocab = text.Vocabulary.from_seed(config.seed)
        self.scheduler = Scheduler(config.max_num_seqs, config.kv_cache_tokens)
        self.started_unix = time.time()
        self.metrics = EngineMetrics(config.model, config.max_model_len, self.started_unix)
        self.fingerprint = f"vllm-{VLLM_VERSION}-{text.stable_hash(config.model, config.seed) >> 32:08x}"
        self._models_permission_id = f"modelperm-{_random_id()}"
        self._bearer = f"Bearer {config.api_key}".encode() if config.api_key else None
        self._posts = {**_RUNNER_POSTS[config.runner], **_COMMON_POSTS}
        # Responses this engine made, by id: only it can GET, cancel or continue them.
        self.responses: dict[str, responses.StoredResponse] = {}
        self._background: dict[str, asyncio.Task[None]] = {}  # background responses still running

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                return hmac.compare_digest(value, self._bearer or b"")
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # no lifespan work: the engine is ready once it exists
        path, method = scope["path"], scope["method"]
        if self._bearer is not None and path.startswith(GUARDED_PATHS) and not self._authorized(scope):
            await _respond(send, 401, _UNAUTHORIZED, _JSON)
            return
        post = self._posts.get(path)
        if post is not None:
            if method != "POST":
                await _respond(send, 405, _METHOD_NOT_ALLOWED, _JSON, allow=b"POST")
                return
            await getattr(self, post)(scope, receive, send)
            return
        if path.startswith(_RESPONSES_PREFIX) and self.config.runner == "generate":
            await self._stored_response(path[len(_RESPONSES_PREFIX):], method, send)
            return
        handler = self._gets.get(path)
        if handler is None:
            await _respond(send, 404, _NOT_FOUND, _JSON)
        elif method != "GET" and path != "/metrics":  # vLLM mounts /metrics for every method
            await _respond(send, 405, _METHOD_NOT_ALLOWED, _JSON, allow=b"GET")
        else:
            await handler(self, send)

    # --- plain routes -------------------------------------------------------------------

    async def _health(self, send: Send) -> None:
        await _respond(send, 200, b"", None)

    async def _version(self, send: Send) -> None:
        await _respond(send, 200, wire.dumps({"version": VLLM_VERSION}).encode(), _JSON)

    async def _models(self, send: Send) -> None:
        body = wire.model_list(
            model=self.config.model,
            root=self.config.model,
            max_model_len=self.config.max_model_len,
            created=int(self.timebase.wall()),
            permission_id=self._models_permission_id,
        )
        await _respond(send, 200, body, _JSON)

    async def _metrics(self, send: Send) -> None:
        s = self.scheduler
        body = self.metrics.render(s.running, s.waiting, s.kv_cache_usage).encode()
        await _respond(send, 200, body, (b"content-type", METRICS_CONTENT_TYPE.encode()))

    _gets = {"/health": _health, "/version": _version, "/v1/models": _models, "/metrics": _metrics}

    # --- generation ---------------------------------------------------------------------

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._generate(scope, receive, send, chat=True)

    async def _completion(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._generate(scope, receive, send, chat=False)

    async def _generate(self, scope: Scope, receive: Receive, send: Send, *, chat: bool) -> None:
        arrived = self.timebase.clock()
        body = await _read_body(receive)
        headers = dict(scope["headers"])
        try:
            data = parse_json_body(headers.get(b"content-type", b"").decode("latin-1"), body)
            request = protocol.parse_chat(data) if chat else protocol.parse_completion(data)
            if request.model and request.model != self.config.model:
                raise not_found_model(request.model, self.config.model)
            budgets = protocol.check_sampling(request, self.config.max_model_len)
        except ApiError as exc:
            await _respond(send, exc.status, exc.body(), _JSON)
            return

        prefix = "chatcmpl-" if chat else "cmpl-"
        header_id = headers.get(b"x-request-id")
        request_id = prefix + (header_id.decode("latin-1") if header_id is not None else _random_id())
        sequences = self._plan(request, budgets)
        created = int(self.timebase.wall())

        async def work(state: dict[str, bool]) -> None:
            if request.stream:
                await self._stream(send, request, request_id, created, sequences, arrived, state)
            else:
                await self._complete(send, request, request_id, created, sequences, arrived, state)

        await _abort_on_disconnect(receive, work)

    def _plan(self, request: protocol.GenerationRequest, budgets: list[int]) -> list[_Sequence]:
        sequences = []
        cfg = self.config
        for p, (prompt, budget) in enumerate(zip(request.prompts, budgets, strict=True)):
            for c in range(request.n):
                key = (request.seed, *prompt.key)
                reply = text.plan_reply(cfg.seed, key, c, cfg.reply_tokens_min, cfg.reply_tokens_max)
                if not request.ignore_eos and reply.natural_tokens <= budget:
                    length, finish = reply.natural_tokens, "stop"
                else:
                    length, finish = budget, "length"
                sequences.append(_Sequence(p * request.n + c, prompt.tokens, reply, length, finish))
        return sequences

    async def _run(
        self,
        sequences: list[_Sequence],
        arrived: float,
        on_first: Callable[[], Awaitable[None]] | None,
        on_token: Callable[[_Sequence, int, bool], Awaitable[None]],
    ) -> None:
        """Admit, prefill and decode every sequence; ``on_token(seq, i, last)`` per token."""
        clock, scheduler, metrics, timing = self.timebase.clock, self.scheduler, self.metrics, self.timing
        await scheduler.admit(len(sequences))
        active = list(sequences)
        prompt_tokens = sum(s.prompt_tokens for s in sequences)
        scheduled = clock()
        for seq in sequences:
            seq.queued_s = scheduled - arrived
        scheduler.cached_tokens += prompt_tokens
        try:
            deadline = scheduled + timing.first_token_s(prompt_tokens, scheduler.running)
            await self.timebase.sleep_until(deadline)
            now = clock()
            metrics.prompt_tokens += prompt_tokens
            for seq in sequences:
                metrics.ttft.observe(now - arrived)
            if on_first is not None:
                await on_first()
            last_token_at = now
            step = 0
            while active:
                if step:
                    deadline += timing.next_token_s(scheduler.running)
                    await self.timebase.sleep_until(deadline)
                    now = clock()
                    itl = now - last_token_at
                    last_token_at = now
                for seq in active:
                    seq.generated += 1
                    metrics.generation_tokens += 1
                    scheduler.cached_tokens += 1
                    if step:
                        metrics.itl.observe(itl)
                    last = seq.generated == seq.length
                    if last:
                        self._finish(seq, seq.finish_reason, now - arrived)
                    await on_token(seq, step, last)
                if any(seq.generated == seq.length for seq in active):
                    active = [seq for seq in active if seq.generated < seq.length]
                step += 1
        finally:
            for seq in active:
                if seq.generated < seq.length:  # aborted: what it generated stays counted
                    self._finish(seq, None, clock() - arrived)

    def _finish(self, seq: _Sequence, reason: str | None, e2e_s: float) -> None:
        """``reason`` None is an abort: as in vLLM, its tokens stay counted but no request
        finishes in ``vllm:request_success_total`` or the per-request histograms."""
        seq.length = seq.generated  # marks it done
        if reason is not None:
            metrics = self.metrics
            metrics.finished[reason] += 1
            metrics.e2e.observe(e2e_s)
            metrics.queue_time.observe(seq.queued_s)
            metrics.request_prompt_tokens.observe(seq.prompt_tokens)
            metrics.request_generation_tokens.observe(seq.generated)
        self.scheduler.cached_tokens -= seq.prompt_tokens + seq.generated
        self.scheduler.release(1)

    def _token_json(self, chat: bool, seq: _Sequence, step: int) -> str:
        if seq.finish_reason == "stop" and seq.generated == seq.length:
            return '""'  # the EOS token: counted, but it has no text
        index = seq.reply.token_index(step)
        return self.vocab.first_json[index] if chat and step == 0 else self.vocab.tokens_json[index]

    async def _stream(
        self,
        send: Send,
        request: protocol.GenerationRequest,
        request_id: str,
        created: int,
        sequences: list[_Sequence],
        arrived: float,
        state: dict[str, bool],
    ) -> None:
        framer = wire.StreamFramer(
            chat=request.chat,
            request_id=request_id,
            created=created,
            model=self.config.model,
            fingerprint=self.fingerprint,
            include_usage=request.include_usage,
            continuous_usage=request.continuous_usage,
        )
        chat = request.chat
        await send({"type": "http.response.start", "status": 200, "headers": _SSE})

        async def on_first() -> None:
            if chat:  # vLLM sends the role with the first token, not before it
                for seq in sequences:
                    chunk = framer.role(seq.index, request.role, seq.prompt_tokens)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})

        async def on_token(seq: _Sequence, step: int, last: bool) -> None:
            token_json = self._token_json(chat, seq, step)
            if last:
                chunk = framer.last(seq.index, token_json, seq.finish_reason, seq.prompt_tokens, seq.generated)
            else:
                chunk = framer.token(seq.index, token_json, seq.prompt_tokens, seq.generated)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

        await self._run(sequences, arrived, on_first, on_token)
        tail = wire.DONE
        if request.include_usage:
            prompt_tokens = sum(p.tokens for p in request.prompts)
            tail = framer.usage(prompt_tokens, sum(s.generated for s in sequences)) + wire.DONE
        state["finished"] = True
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    async def _complete(
        self,
        send: Send,
        request: protocol.GenerationRequest,
        request_id: str,
        created: int,
        sequences: list[_Sequence],
        arrived: float,
        state: dict[str, bool],
    ) -> None:
        async def on_token(seq: _Sequence, step: int, last: bool) -> None:
            return None

        await self._run(sequences, arrived, None, on_token)
        choices = []
        for seq in sequences:
            words = seq.length - 1 if seq.finish_reason == "stop" else seq.length
            choices.append((seq.reply.text(self.vocab, words, strip_first=request.chat), seq.finish_reason))
        prompt_tokens = sum(p.tokens for p in request.prompts)
        completion_tokens = sum(s.generated for s in sequences)
        common = {
            "request_id": request_id,
            "created": created,
            "model": self.config.model,
            "fingerprint": self.fingerprint,
            "choices": choices,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
        }
        body = wire.chat_response(role=request.role, **common) if request.chat else wire.completion_response(**common)
        state["finished"] = True
        await _respond(send, 200, body, _JSON)

    # --- the other APIs: shared steps -----------------------------------------------------

    def _one_sequence(
        self, prompt: protocol.Prompt, max_tokens: int | None, param: str, *, stream: bool,
        temperature: float | None, top_p: float | None, ignore_eos: bool = False, seed: int | None = None,
    ) -> _Sequence:  # fmt: skip
        """vLLM turns Responses and Messages requests into one chat sequence; its checks apply."""
        request = protocol.GenerationRequest(
            chat=True, model=None, prompts=[prompt], n=1, max_tokens=max_tokens, max_tokens_param=param,
            stream=stream, include_usage=False, continuous_usage=False, ignore_eos=ignore_eos, seed=seed,
            temperature=temperature, top_p=top_p,
        )  # fmt: skip
        budgets = protocol.check_sampling(request, self.config.max_model_len)
        return self._plan(request, budgets)[0]

    def _reply_text(self, seq: _Sequence) -> str:
        words = seq.length - 1 if seq.finish_reason == "stop" and seq.generated == seq.length else seq.generated
        return seq.reply.text(self.vocab, words, strip_first=True)

    # --- Responses ----------------------------------------------------------------------

    async def _responses(self, scope: Scope, receive: Receive, send: Send) -> None:
        arrived = self.timebase.clock()
        try:
            request = responses.parse(await read_json(scope, receive))
            self._check_model(request.model)
            conversation = list(request.messages)
            if request.previous_response_id is not None:
                previous = self.responses.get(request.previous_response_id)
                if previous is None:
                    raise responses.not_found(request.previous_response_id)
                conversation = previous.conversation + conversation
            seq = self._one_sequence(
                responses.prompt_of(conversation), request.max_output_tokens, "max_output_tokens",
                stream=request.stream, temperature=request.temperature, top_p=request.top_p,
                ignore_eos=request.ignore_eos, seed=request.seed,
            )  # fmt: skip
        except ApiError as exc:
            await _respond(send, exc.status, exc.body(), _JSON)
            return
        response_id, item_id = f"resp_{_random_id()}", f"msg_{_random_id()}"
        created = int(self.timebase.wall())

        def final() -> dict[str, Any]:
            content = self._reply_text(seq)
            body = responses.response_object(
                request, response_id=response_id, created_at=created, model=self.config.model,
                status="completed" if seq.finish_reason == "stop" else "incomplete",
                output=[responses.message_item(item_id, content, "completed")],
                usage_body=responses.usage(seq.prompt_tokens, seq.generated),
                incomplete=seq.finish_reason == "length",
            )  # fmt: skip
            if request.store:
                self._store(response_id, responses.StoredResponse(body, [*conversation, ("assistant", content)]))
            return body

        async def whole(state: dict[str, bool]) -> None:
            await self._run([seq], arrived, None, _ignore_token)
            body = final()
            state["finished"] = True
            await _respond(send, 200, wire.dumps(body).encode(), _JSON)

        async def stream(state: dict[str, bool]) -> None:
            events = responses.EventWriter(item_id)
            initial = responses.response_object(
                request, response_id=response_id, created_at=created, model=self.config.model,
                status="in_progress", output=[], usage_body=None,
            )  # fmt: skip
            await send({"type": "http.response.start", "status": 200, "headers": _SSE})
            await _send_chunk(send, events.response("response.created", initial))
            await _send_chunk(send, events.response("response.in_progress", initial))
            opened = False

            async def on_token(seq: _Sequence, step: int, last: bool) -> None:
                nonlocal opened
                token_json = self._token_json(True, seq, step)
                if token_json == '""':
                    return  # vLLM sends no event for a token without text
                if not opened:
                    opened = True
                    item = responses.message_item(item_id, None, "in_progress")
                    await _send_chunk(send, events.item("response.output_item.added", item))
                    await _send_chunk(send, events.part("response.content_part.added", None))
                await _send_chunk(send, events.delta(token_json))

            await self._run([seq], arrived, None, on_token)
            body = final()
            if opened:
                content = body["output"][0]["content"][0]["text"]
                await _send_chunk(send, events.text_done(content))
                await _send_chunk(send, events.part("response.content_part.done", content))
                await _send_chunk(send, events.item("response.output_item.done", body["output"][0]))
            state["finished"] = True
            tail = events.response("response.completed", body)
            await send({"type": "http.response.body", "body": tail, "more_body": False})

        if request.background and not request.stream:
            await self._background_response(request, response_id, created, seq, arrived, final, send)
            return
        await _abort_on_disconnect(receive, stream if request.stream else whole)

    async def _background_response(
        self, request: responses.ResponsesRequest, response_id: str, created: int, seq: _Sequence, arrived: float,
        final: Callable[[], dict[str, Any]], send: Send,
    ) -> None:  # fmt: skip
        """Answer "queued" at once and generate in a task; GET shows its progress, cancel stops it."""
        queued = responses.response_object(
            request, response_id=response_id, created_at=created, model=self.config.model,
            status="queued", output=[], usage_body=None,
        )  # fmt: skip
        self._store(response_id, responses.StoredResponse(queued))

        async def generate() -> None:
            queued["status"] = "in_progress"
            try:
                await self._run([seq], arrived, None, _ignore_token)
                final()
            finally:
                self._background.pop(response_id, None)

        self._background[response_id] = asyncio.create_task(generate())
        await _respond(send, 200, wire.dumps(queued).encode(), _JSON)

    def _store(self, response_id: str, stored: responses.StoredResponse) -> None:
        # vLLM keeps every response until it restarts; a benchmark against the simulator could
        # make millions, so the oldest are forgotten past a bound no test or demo reaches.
        self.responses[response_id] = stored
        if len(self.responses) > MAX_STORED_RESPONSES:
            del self.responses[next(iter(self.responses))]

    async def _stored_response(self, rest: str, method: str, send: Send) -> None:
        """``GET /v1/responses/{id}`` and ``POST /v1/responses/{id}/cancel``."""
        response_id, _, action = rest.partition("/")
        if action not in ("", "cancel") or not response_id:
            await _respond(send, 404, _NOT_FOUND, _JSON)
            return
        wanted = "POST" if action == "cancel" else "GET"
        if method != wanted:
            await _respond(send, 405, _METHOD_NOT_ALLOWED, _JSON, allow=wanted.encode())
            return
        stored = self.responses.get(response_id)
        if stored is None:
            error = responses.not_found(response_id)
        elif action == "cancel" and stored.body["status"] in ("queued", "in_progress"):
            stored.body["status"] = "cancelled"
            task = self._background.pop(response_id, None)
            if task is not None:
                task.cancel()
            await _respond(send, 200, wire.dumps(stored.body).encode(), _JSON)
            return
        elif action == "cancel":
            error = responses.cannot_cancel()  # vLLM's words for any response already finished
        else:
            await _respond(send, 200, wire.dumps(stored.body).encode(), _JSON)
            return
        await _respond(send, error.status, error.body(), _JSON)

    # --- Anthropic Messages ---------------------------------------------------------------

    async def _messages(self, scope: Scope, receive: Receive, send: Send) -> None:
        arrived = self.timebase.clock()
        try:
            request = anthropic.parse(await read_json(scope, receive))
            self._check_model(request.model)
            seq = self._one_sequence(
                request.prompt, request.max_tokens, "max_completion_tokens",
                stream=request.stream, temperature=request.temperature, top_p=request.top_p,
            )  # fmt: skip
        except ApiError as exc:
            await _respond(send, exc.status, exc.anthropic_body(), _JSON)
            return
        message_id = f"chatcmpl-{_random_id()}"
        model = self.config.model

        async def whole(state: dict[str, bool]) -> None:
            await self._run([seq], arrived, None, _ignore_token)
            body = anthropic.message_body(
                message_id=message_id, model=model, content=self._reply_text(seq), finish_reason=seq.finish_reason,
                input_tokens=seq.prompt_tokens, output_tokens=seq.generated,
            )  # fmt: skip
            state["finished"] = True
            await _respond(send, 200, body, _JSON)

        async def stream(state: dict[str, bool]) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": _SSE})
            opened = False

            async def on_first() -> None:  # vLLM's first chat chunk comes with the first token
                await _send_chunk(send, anthropic.message_start(message_id, model, seq.prompt_tokens))

            async def on_token(seq: _Sequence, step: int, last: bool) -> None:
                nonlocal opened
                token_json = self._token_json(True, seq, step)
                if token_json == '""':
                    return
                if not opened:
                    opened = True
                    await _send_chunk(send, anthropic.BLOCK_START)
                await _send_chunk(send, anthropic.block_delta(token_json))

            await self._run([seq], arrived, on_first, on_token)
            if opened:
                await _send_chunk(send, anthropic.BLOCK_STOP)
            await _send_chunk(send, anthropic.message_delta(seq.finish_reason, seq.prompt_tokens, seq.generated))
            state["finished"] = True
            await send({"type": "http.response.body", "body": anthropic.MESSAGE_STOP, "more_body": False})

        await _abort_on_disconnect(receive, stream if request.stream else whole)

    async def _count_tokens(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            model, prompt = anthropic.parse_count(await read_json(scope, receive))
            self._check_model(model)
        except ApiError as exc:
            await _respond(send, exc.status, exc.anthropic_body(), _JSON)
            return
        await _respond(send, 200, anthropic.count_tokens_body(prompt.tokens), _JSON)


async def _ignore_token(seq: _Sequence, step: int, last: bool) -> None:
    return None


# --- the server -------------------------------------------------------------------------

ReadyCallback = Callable[[str, int], None]


async def serve(
    config: EngineConfig,
    *,
    timebase: Timebase | None = None,
    on_ready: ReadyCallback | None = None,
    log_level: str = "warning",
) -> None:
    """Load (wait ``load_seconds`` with the port closed), then serve until stopped.

    ``on_ready(host, port)`` is called once the port accepts connections (the port is the
    real one when ``config.port`` is 0).
    """
    import uvicorn  # imported here: `spot --help` must not pay for it

    timebase = timebase or Timebase()
    app = SimEngine(config, timebase)
    await timebase.sleep(config.timing.load_seconds)
    sock = _bind(config.host, config.port)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            http=_http_protocol(),
            ws="none",
            lifespan="off",
            access_log=False,
            log_level=log_level,
            # Stopping the engine must not wait for the longest stream to finish.
            timeout_graceful_shutdown=1,
        )
    )
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if serving.done():
                break  # failed to start; awaiting it below raises why
            await asyncio.sleep(0.005)
        if server.started and on_ready is not None:
            host, port = sock.getsockname()[:2]
            on_ready(host, port)
        await serving
    finally:
        sock.close()


def run(config: EngineConfig, *, on_ready: ReadyCallback | None = None, log_level: str = "warning") -> None:
    """``serve()`` on uvloop (when installed), blocking until the server stops."""
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it everywhere we run
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(config, on_ready=on_ready, log_level=log_level))


def _http_protocol() -> str:
    try:
        import httptools  # noqa: F401 - only asking whether it is there
    except ImportError:  # pragma: no cover
        return "h11"
    return "httptools"


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
    except socket.gaierror as exc:
        raise InputError(f"cannot resolve host {host!r}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise SpotError(f"cannot listen on {host}:{port}: {exc.strerror}", hint="choose another --port") from None
    sock.set_inheritable(True)
    return sock
