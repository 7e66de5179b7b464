"""The simulated engine's routes that answer in one step, without a token stream: the
tokenizer (every runner), pooling (embeddings, score, rerank) and speech-to-text.

A mixin of ``SimEngine``: it uses the engine's config, vocabulary, timing and metrics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import audio, pooling, protocol, text, wire
from .asgi import JSON as _JSON
from .asgi import VARY as _VARY
from .asgi import Receive, Scope, Send, read_body, read_json
from .asgi import random_id as _random_id
from .asgi import respond as _respond
from .validation import ApiError, not_found_model

if TYPE_CHECKING:
    from .engine import EngineConfig
    from .metrics import EngineMetrics
    from .scheduler import Scheduler
    from .timing import Timebase, TimingModel


class OneShotRoutes:
    config: EngineConfig
    vocab: text.Vocabulary
    timebase: Timebase
    timing: TimingModel
    scheduler: Scheduler
    metrics: EngineMetrics

    def _check_model(self, model: str | None) -> None:
        """The generation routes' and the tokenizer's unknown-model 404 (pooling has its own)."""
        if model and model != self.config.model:
            raise not_found_model(model, self.config.model)

    # --- tokenizer ------------------------------------------------------------------------

    async def _tokenize(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            model, ids = protocol.parse_tokenize(await read_json(scope, receive))
            self._check_model(model)
        except ApiError as exc:
            await _respond(send, exc.status, exc.body(), _JSON)
            return
        body = {"count": len(ids), "max_model_len": self.config.max_model_len, "tokens": ids, "token_strs": None}
        await _respond(send, 200, wire.dumps(body).encode(), _JSON)

    async def _detokenize(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            model, ids = protocol.parse_detokenize(await read_json(scope, receive))
            self._check_model(model)
        except ApiError as exc:
            await _respond(send, exc.status, exc.body(), _JSON)
            return
        await _respond(send, 200, wire.dumps({"prompt": self.vocab.detokenize(ids)}).encode(), _JSON)

    # --- pooling: embeddings, score, rerank -------------------------------------------------

    async def _pool(self, prompt_tokens: int) -> None:
        """A pooling request costs one prefill of its prompts and generates nothing."""
        await self.timebase.sleep(self.timing.first_token_s(prompt_tokens, self.scheduler.running))
        self.metrics.prompt_tokens += prompt_tokens

    def _check_pooling_model(self, model: str | None) -> None:
        if model and model != self.config.model:
            raise pooling.not_found_model(model)

    async def _embeddings(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            request = pooling.parse_embeddings(await read_json(scope, receive))
            self._check_pooling_model(request.model)
            pooling.check_embeddings(request, self.config.model, self.config.max_model_len)
        except ApiError as exc:
            await _respond(send, exc.status, exc.body(), _JSON)
            return
        prompt_tokens = sum(t.tokens for t in request.inputs)
        await self._pool(prompt_tokens)
        vectors = [pooling.embed(self.config.seed, t) for t in request.inputs]
        request_id, created = f"embd-{_random_id()}", int(self.timebase.wall())
        if request.encoding_format in ("bytes", "bytes_only"):
            body, metadata = pooling.embeddings_bytes(
                request_id=request_id, created=created, model=self.config.model, vectors=vectors,
                prompt_tokens=prompt_tokens,
            )  # fmt: skip
            headers = [(b"metadata", metadata)] if request.encoding_format == "bytes" else []
            headers += [(b"content-type", b"application/octet-stream"), _VARY]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        body = pooling.embeddings_body(
            request_id=request_id, created=created, model=self.config.model, vectors=vectors,
            encoding=request.encoding_format, prompt_tokens=prompt_tokens,
        )  # fmt: skip
        await _respond(send, 200, body, _JSON)

    async def _scores(self, request: pooling.ScoreRequest) -> list[float]:
        self._check_pooling_model(request.model)
        matched = pooling.pairs(request, self.config.max_model_len)
        await self._pool(pooling.prompt_tokens(request))
        seed = self.config.seed
        return [pooling.cosine(pooling.embed(seed, q), pooling.embed(seed, d)) for q, d in matched]

    async def _score(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            request = pooling.parse_score(await read_json(scope, receive))
            scores = await self._scores(request)
        except ApiError as exc:
            await _respond(send, exc.status, exc.body(), _JSON)
            return
        body = pooling.score_body(
            request_id=f"score-{_random_id()}", created=int(self.timebase.wall()), model=self.config.model,
            scores=scores, prompt_tokens=pooling.prompt_tokens(request),
        )  # fmt: skip
        await _respond(send, 200, body, _JSON)

    async def _rerank(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            request = pooling.parse_rerank(await read_json(scope, receive))
            scores = await self._scores(request)
        except ApiError as exc:
            await _respond(send, exc.status, exc.body(), _JSON)
            return
        body = pooling.rerank_body(
            request_id=f"score-{_random_id()}", model=self.config.model, documents=request.documents,
            scores=scores, top_n=request.top_n, prompt_tokens=pooling.prompt_tokens(request),
        )  # fmt: skip
        await _respond(send, 200, body, _JSON)

    # --- audio ------------------------------------------------------------------------------

    async def _transcription(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._audio(scope, receive, send, translate=False)

    async def _translation(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._audio(scope, receive, send, translate=True)

    async def _audio(self, scope: Scope, receive: Receive, send: Send, *, translate: bool) -> None:
        body = await read_body(receive)
        content_type = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1")
        try:
            request = audio.parse(content_type, body)
            self._check_model(request.model)
        except ApiError as exc:
            await _respond(send, exc.status, exc.body(), _JSON)
            return
        tokens = audio.prompt_tokens(request.seconds)
        await self._pool(tokens)
        reply = text.plan_reply(self.config.seed, ("audio", request.digest), 0, 1, max(1, tokens))
        words = reply.text(self.vocab, reply.natural_tokens, strip_first=True)
        self.metrics.generation_tokens += reply.natural_tokens
        await _respond(send, 200, audio.response_body(words, request.seconds, translate=translate), _JSON)
