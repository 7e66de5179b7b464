"""A stand-in engine the tests control completely, so that what the gateway should log is known.

`spot sim engine` behaves like vLLM and only like vLLM; this one speaks vLLM's wire format for
``/v1/completions`` when asked to, and breaks it on purpose when the request's ``model`` says
so. It runs on its own event loop in a thread of the test process, and records, per request
(by the ``X-Request-Id`` the gateway sends), every usage it wrote on the wire: the truth an
aborted stream's row is checked against.

Models (what the engine does with a request for them):

* ``script``: a completions stream, vLLM-style: ``prompt`` (one or a list), ``n`` choices per
  prompt numbered prompt_index * n + i, ``max_tokens`` per choice, several tokens per chunk when
  ``merge`` is true (vLLM merges when it falls behind), continuous usage per choice. With
  ``stall_after: K`` it sends K events and then stays silent until the connection closes, so a
  client that reads K events and leaves has seen exactly what the gateway saw. Not streamed:
  one JSON answer with usage near its end, as vLLM writes it.
* ``usage-overflow``, ``usage-negative``, ``usage-string``: as ``script``, with every usage's
  ``completion_tokens`` as ``1e400``, ``-5`` or ``"12"``.
* ``status-NNN``: answers HTTP status NNN with a JSON body.
* ``non-utf8``: the answer's text holds the bytes ``ff fe``.
* ``no-usage``: a 200 answer without ``usage`` (streamed: no usage in any chunk).
* ``huge``: a non-streamed 200 answer of ``body_bytes`` bytes (``declare_length`` false: chunked).

The other routes vLLM serves, in the shapes of vLLM 0.32's own response models
(vllm/entrypoints/pooling/*/protocol.py, speech_to_text/transcription/protocol.py,
openai/responses/protocol.py), for the gateway's tests where the tiny chat model cannot answer
(it is no pooling or speech model):

* ``POST /v1/embeddings``: one vector per input (a string, a list of strings, a list of token
  ids or a list of those), ``usage.prompt_tokens`` = the words (or ids) per input + 1.
* ``POST /v1/score``, ``/v1/rerank``, ``/rerank``, ``/v2/rerank``: one score per document.
* ``POST /v1/audio/transcriptions`` and ``/translations``: the form's bytes are kept; the answer
  is ``{"text", "usage": {"type": "duration", "seconds": N}}`` (transcriptions; translations carry
  no usage, as in vLLM).
* ``POST /v1/responses`` (not streamed), ``GET /v1/responses/{id}`` and ``POST .../cancel``: answers
  are kept by id on this engine only, as vLLM keeps them in memory; an unknown id is vLLM's 404,
  cancelling a finished (synchronous) one vLLM's 400.

* ``POST /v1/messages`` for model ``cut-stream``: a stream that ends after ``message_start``
  (input_tokens 7), as an engine that dies mid-stream.

Every request (method, path, headers, body) is kept in ``calls``.

Each response closes its connection (``Connection: close``), so nothing carries across requests.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
from dataclasses import dataclass, field
from typing import Any

BAD_USAGE = {"usage-overflow": b"1e400", "usage-negative": b"-5", "usage-string": b'"12"'}


@dataclass
class Served:
    """What the engine put on the wire for one request."""

    prompt_tokens: list[int] = field(default_factory=list)  # per prompt
    n: int = 1
    running: dict[int, int] = field(default_factory=dict)  # choice index -> completion tokens sent
    events: int = 0
    finished: bool = False  # sent [DONE]
    closed: threading.Event = field(default_factory=threading.Event)

    def prompt_tokens_seen(self) -> int:
        """Prompt tokens as vLLM's usage counts them: once per prompt, for prompts with a choice seen."""
        return sum(self.prompt_tokens[p] for p in {i // self.n for i in self.running})

    def completion_tokens_sent(self) -> int:
        return sum(self.running.values())


@dataclass
class Call:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class StandInEngine:
    def __init__(self) -> None:
        self.served: dict[str, Served] = {}
        self.calls: list[Call] = []
        self.responses: dict[str, bytes] = {}  # Responses API answers kept by id, as vLLM does
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> StandInEngine:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._connection, "127.0.0.1", 0), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # -- HTTP ----------------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            if lines[0].startswith("GET /health"):
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                await writer.drain()
                return
            method, path = lines[0].split(" ")[:2]
            self.calls.append(Call(method, path, headers, body))
            if path == "/v1/messages" and b'"cut-stream"' in body:
                # A Messages stream whose engine dies after message_start (vLLM's event bytes).
                start = (b'event: message_start\ndata: {"type":"message_start","message":{"id":"chatcmpl-x","type":'
                         b'"message","role":"assistant","content":[],"model":"cut-stream","stop_reason":null,'
                         b'"stop_sequence":null,"usage":{"input_tokens":7,"output_tokens":0}}}\n\n')
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
                             b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n%x\r\n%s\r\n" % (len(start), start))
                await writer.drain()
                return
            if not path.startswith(("/v1/completions", "/v1/chat/completions")):
                status, answer = self._other_route(method, path, body)
                writer.write(b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n%s" % (status, len(answer), answer))
                await writer.drain()
                return
            request = json.loads(body)
            served = self.served.setdefault(headers.get("x-request-id", ""), Served())
            try:
                await self._answer(request, served, reader, writer)
            finally:
                served.closed.set()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def _other_route(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        if path.startswith("/v1/responses/") and method == "GET":
            found = self.responses.get(path.removeprefix("/v1/responses/").partition("?")[0])
            if found is None:
                rid = path.removeprefix("/v1/responses/")
                return 404, json.dumps({"error": {"message": f"Response with id '{rid}' not found.",
                                                  "type": "invalid_request_error", "param": "response_id",
                                                  "code": 404}}).encode()
            return 200, found
        if path.startswith("/v1/responses/") and path.endswith("/cancel"):
            # vLLM 0.32 (serving.py cancel_responses): a synchronous response cannot be cancelled.
            rid = path.removeprefix("/v1/responses/").removesuffix("/cancel")
            if rid not in self.responses:
                return 404, json.dumps({"error": {"message": f"Response with id '{rid}' not found.",
                                                  "type": "invalid_request_error", "param": "response_id",
                                                  "code": 404}}).encode()
            return 400, json.dumps({"error": {"message": "Cannot cancel a synchronous response.",
                                              "type": "invalid_request_error", "param": "response_id",
                                              "code": 400}}).encode()
        if path.startswith("/v1/audio/"):
            if path.endswith("/translations"):
                return 200, b'{"text":"hello"}'
            return 200, b'{"text":"hello","usage":{"type":"duration","seconds":%d}}' % (len(body) // 1000 + 1)
        request = json.loads(body)
        model = request.get("model", "")
        if path == "/v1/embeddings":
            inputs = request["input"]
            if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], int)):
                inputs = [inputs]
            counts = [len(i.split()) + 1 if isinstance(i, str) else len(i) for i in inputs]
            data = ",".join(f'{{"index":{i},"object":"embedding","embedding":[0.25,-0.5,{n}.0]}}'
                            for i, n in enumerate(counts))
            return 200, (f'{{"id":"embd-x","object":"list","created":1,"model":"{model}","data":[{data}],'
                         f'"usage":{{"prompt_tokens":{sum(counts)},"total_tokens":{sum(counts)},"completion_tokens":0,'
                         f'"prompt_tokens_details":null}}}}').encode()
        if path in ("/v1/rerank", "/rerank", "/v2/rerank", "/v1/score"):
            documents = request.get("documents") or request.get("queries") or request.get("text_2") or []
            documents = [documents] if isinstance(documents, str) else documents
            tokens = sum(len(str(d).split()) + 2 for d in documents)
            if path == "/v1/score":
                data = ",".join(f'{{"index":{i},"object":"score","score":0.5}}' for i in range(len(documents)))
                return 200, (f'{{"id":"score-x","object":"list","created":1,"model":"{model}","data":[{data}],'
                             f'"usage":{{"prompt_tokens":{tokens},"total_tokens":{tokens},"completion_tokens":0,'
                             f'"prompt_tokens_details":null}}}}').encode()
            results = ",".join(f'{{"index":{i},"document":{{"text":{json.dumps(d)}}},"relevance_score":0.5}}'
                               for i, d in enumerate(documents))
            return 200, (f'{{"id":"rerank-x","model":"{model}","usage":{{"prompt_tokens":{tokens},'
                         f'"total_tokens":{tokens}}},"results":[{results}]}}').encode()
        if path == "/v1/responses":
            rid = f"resp_{self.port:x}{len(self.responses):08x}"
            prompt = len(str(request.get("input", "")).split()) + 1
            output = int(request.get("max_output_tokens") or 4)
            answer = (f'{{"id":"{rid}","created_at":1,"incomplete_details":null,"instructions":null,"metadata":null,'
                      f'"model":"{model}","object":"response","output":[{{"id":"msg_x","content":[{{"annotations":[],'
                      f'"text":"tok","type":"output_text","logprobs":null}}],"role":"assistant","status":"completed",'
                      f'"type":"message","phase":null}}],"previous_response_id":'
                      f'{json.dumps(request.get("previous_response_id"))},"status":"completed","usage":{{'
                      f'"input_tokens":{prompt},"input_tokens_details":{{"cached_tokens":0}},"output_tokens":{output},'
                      f'"output_tokens_details":{{"reasoning_tokens":0}},"total_tokens":{prompt + output}}},'
                      f'"user":null}}').encode()
            self.responses[rid] = answer
            return 200, answer
        return 404, b'{"detail":"Not Found"}'

    async def _answer(self, request: dict[str, Any], served: Served, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        model = request.get("model", "")
        if model.startswith("status-"):
            body = b'{"error":{"message":"odd","type":"Odd","param":null,"code":%s}}' % model[7:].encode()
            writer.write(b"HTTP/1.1 %s Odd\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                         b"connection: close\r\n\r\n%s" % (model[7:].encode(), len(body), body))
            await writer.drain()
            return
        if model == "huge":
            await self._huge(request, writer)
            return
        prompts = request.get("prompt", "x")
        prompts = [prompts] if isinstance(prompts, str) else prompts
        served.prompt_tokens = [len(p.split()) + 1 for p in prompts]
        served.n = int(request.get("n") or 1)
        if request.get("stream"):
            await self._stream(request, model, served, reader, writer)
        else:
            await self._whole(request, model, served, writer)

    async def _stream(self, request: dict[str, Any], model: str, served: Served, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        options = request.get("stream_options") or {}
        with_usage = model != "no-usage"  # an engine that ignores stream_options
        continuous = with_usage and options.get("include_usage") and options.get("continuous_usage_stats")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
                     b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n")
        rng = random.Random(request.get("seed", 0))
        max_tokens = int(request.get("max_tokens") or 16)
        choices = len(served.prompt_tokens) * served.n
        stall_after = request.get("stall_after")
        bad = BAD_USAGE.get(model)
        text = b'"\xff\xfe"' if model == "non-utf8" else b'"tok"'

        async def event(payload: bytes) -> bool:
            """Send one event; False once the stall point is reached (then wait for the close)."""
            if stall_after is not None and served.events >= stall_after:
                await reader.read()  # silent until the gateway closes the connection
                return False
            data = b"data: " + payload + b"\n\n"
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()
            served.events += 1
            return True

        done = [0] * choices
        while any(d < max_tokens for d in done):
            for index in range(choices):
                if done[index] >= max_tokens:
                    continue
                step = min(rng.randint(1, 3) if request.get("merge") else 1, max_tokens - done[index])
                done[index] += step
                finish = b'"length"' if done[index] == max_tokens else b"null"
                prompt_tokens = served.prompt_tokens[index // served.n]
                usage = b""
                if continuous:
                    count = bad or b"%d" % done[index]
                    usage = b',"usage":{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%s}' % (
                        prompt_tokens, prompt_tokens + done[index], count)
                chunk = (b'{"id":"cmpl-x","object":"text_completion","created":1,"model":"%s","choices":[{"index":%d,'
                         b'"text":%s,"logprobs":null,"finish_reason":%s,"stop_reason":null,"prompt_token_ids":null,'
                         b'"token_ids":null}]%s}' % (model.encode(), index, text, finish, usage))
                if not await event(chunk):
                    return
                served.running[index] = done[index]
        if with_usage and options.get("include_usage"):
            prompt_total, completion_total = sum(served.prompt_tokens), sum(done)
            count = bad or b"%d" % completion_total
            final = (b'{"id":"cmpl-x","object":"text_completion","created":1,"model":"%s","choices":[],"usage":'
                     b'{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%s},"system_fingerprint":"fp"}'
                     % (model.encode(), prompt_total, prompt_total + completion_total, count))
            if not await event(final):
                return
        if not await event(b"[DONE]"):
            return
        served.finished = True
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def _whole(self, request: dict[str, Any], model: str, served: Served, writer: asyncio.StreamWriter) -> None:
        max_tokens = int(request.get("max_tokens") or 16)
        choices = len(served.prompt_tokens) * served.n
        text = b'"\xff\xfe"' if model == "non-utf8" else json.dumps("tok " * max_tokens).encode()
        body_choices = b",".join(
            b'{"index":%d,"text":%s,"logprobs":null,"finish_reason":"length","stop_reason":null}' % (i, text)
            for i in range(choices))
        prompt_total, completion_total = sum(served.prompt_tokens), choices * max_tokens
        count = BAD_USAGE.get(model) or b"%d" % completion_total
        usage = b'"usage":{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%s,"prompt_tokens_details":null},' % (
            prompt_total, prompt_total + completion_total, count)
        if model == "no-usage":
            usage = b""
        body = (b'{"id":"cmpl-x","object":"text_completion","created":1,"model":"%s","choices":[%s],'
                b'"service_tier":null,"system_fingerprint":"fp",%s"kv_transfer_params":null,"metrics":null}'
                % (model.encode(), body_choices, usage))
        served.running = {i: max_tokens for i in range(choices)}
        served.finished = True
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                     b"connection: close\r\n\r\n%s" % (len(body), body))
        await writer.drain()

    async def _huge(self, request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        size = int(request["body_bytes"])
        head = b'{"id":"cmpl-x","object":"text_completion","choices":[{"index":0,"text":"'
        tail = b'","finish_reason":"length"}],"usage":{"prompt_tokens":2,"total_tokens":3,"completion_tokens":1}}'
        filler = size - len(head) - len(tail)
        declare = request.get("declare_length", True)
        framing = b"content-length: %d" % size if declare else b"transfer-encoding: chunked"
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n%s\r\nconnection: close\r\n\r\n" % framing)
        pieces = [head] + [b"a" * min(1 << 16, filler - at) for at in range(0, filler, 1 << 16)] + [tail]
        for piece in pieces:
            writer.write(piece if declare else b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        if not declare:
            writer.write(b"0\r\n\r\n")
            await writer.drain()
