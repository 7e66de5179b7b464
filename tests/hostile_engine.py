"""A hostile engine: an OpenAI chat-completions server on a raw socket that breaks HTTP on demand.

The simulator and vLLM only ever send what we expected; this server sends what real middleboxes
and buggy servers send, so the gateway is tested against input nobody here shaped. It writes
exact bytes (asyncio streams, no HTTP library), speaks enough of ``POST /v1/chat/completions``
and ``/v1/completions`` (streamed as vLLM streams, with usage on every chunk when asked, and not
streamed) to be an engine behind ``spot serve --upstream``, and keeps its own counters of the
tokens it generated per request (``GET /stats``), so tests can compare the gateway's token log
with what the engine did.

How a request picks its misbehaviour: the JSON body's ``"misbehave"`` member (the OpenAI SDK's
``extra_body``), else the part of ``model`` after an ``@`` (``tiny@gzip`` routes as any other
model name). The value is ``mode`` or ``mode:arg``:

==================  =================================================================================
``normal``          a well-formed answer (the default)
``interim``         ``100 Continue`` and ``103 Early Hints`` before the real answer
``stray[:ms]``      the answer, then an unsolicited second response (same write, or after ``ms``)
``silence``         reads the request, never answers, keeps the connection open
``stall``           a streamed answer's head and first two events, then silence
``slow_drip:ms``    the whole answer one byte every ``ms`` milliseconds
``huge:bytes``      a non-streamed completion whose content is ``bytes`` long (Content-Length)
``bad_chunk``       a chunked answer whose second chunk size is not hexadecimal
``close_mid_chunk`` a chunk header promising more bytes than are sent, then a close
``gzip``            the answer gzip-compressed with ``Content-Encoding: gzip`` (streams: one flush
                    per event), although the gateway asked for ``identity``
``status:N``        status ``N`` (e.g. 299, 599) with an OpenAI-shaped error body (a completion for 2xx)
``non_utf8``        invalid UTF-8 bytes inside a streamed event's content
``usage:kind``      absurd usage numbers: ``huge`` (1e400), ``negative`` (-5), ``string`` ("12")
``reset``           the response head, then a TCP reset (SO_LINGER 0)
==================  =================================================================================

``max_tokens`` (default 8) completion tokens are generated, each the word ``tok``; the prompt is
counted as one token per whitespace-separated word of the messages or prompt. ``/stats`` answers
``{"requests": {request_id: {"mode", "prompt_tokens", "completion_tokens", "finished"}}}``,
where the id is the ``X-Request-Id`` the gateway sends, and ``completion_tokens`` counts the
tokens actually written (an aborted stream counts what left before the abort).

Run ``python -m tests.hostile_engine --port N``; tests use ``start_hostile_engine(tmp_path)``.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import socket
import struct
import sys
import time
import zlib
from pathlib import Path
from typing import Any

MODES = ("normal", "interim", "stray", "silence", "stall", "slow_drip", "huge", "bad_chunk", "close_mid_chunk", "gzip",
         "status", "non_utf8", "usage", "reset")


class Stats:
    """Tokens generated per request id, as the engine saw them."""

    def __init__(self) -> None:
        self.requests: dict[str, dict[str, Any]] = {}

    def start(self, request_id: str, mode: str, prompt_tokens: int) -> dict[str, Any]:
        entry = self.requests[request_id] = {"mode": mode, "prompt_tokens": prompt_tokens, "completion_tokens": 0,
                                             "finished": False}
        return entry


class Request:
    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    body = await reader.readexactly(length) if length else b""
    return Request(method, path, headers, body)


def response_head(status: int, headers: list[tuple[str, str]], reason: str = "X") -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{n}: {v}" for n, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class Engine:
    def __init__(self) -> None:
        self.stats = Stats()
        self.counter = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await read_request(reader)
                if request is None:
                    return
                keep = await self.answer(request, reader, writer)
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if not writer.is_closing():
                writer.close()

    async def answer(self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Write the answer; False when the connection must be closed afterwards."""
        if request.method == "GET":
            if request.path == "/stats":
                body = compact({"requests": self.stats.requests})
            elif request.path == "/health":
                body = b""
            elif request.path == "/v1/models":
                body = compact({"object": "list", "data": [{"id": "tiny", "object": "model"}]})
            else:
                writer.write(response_head(404, [("content-length", "0")]))
                return True
            writer.write(response_head(200, [("content-type", "application/json"), ("content-length", str(len(body)))])
                         + body)
            await writer.drain()
            return True
        try:
            payload = json.loads(request.body)
        except ValueError:
            payload = {}
        model = str(payload.get("model", "tiny"))
        spec = str(payload.get("misbehave") or (model.split("@", 1)[1] if "@" in model else "normal"))
        mode, _, arg = spec.partition(":")
        self.counter += 1
        request_id = request.headers.get("x-request-id") or f"hostile-{self.counter}"
        words = payload.get("prompt") or " ".join(str(m.get("content", "")) for m in payload.get("messages") or []
                                                  if isinstance(m, dict))
        prompt_tokens = len(str(words).split()) or 1
        entry = self.stats.start(request_id, spec, prompt_tokens)
        max_tokens = int(payload.get("max_tokens") or 8)
        stream = bool(payload.get("stream"))
        options = payload.get("stream_options") or {}
        chat = request.path.endswith("/chat/completions")
        answer = Answer(self, entry, request_id, model, chat, stream, options, max_tokens, prompt_tokens, mode, arg)
        return await answer.write(writer)


class Answer:
    """One completion, written according to its mode."""

    def __init__(self, engine: Engine, entry: dict[str, Any], request_id: str, model: str, chat: bool, stream: bool,
                 options: dict[str, Any], max_tokens: int, prompt_tokens: int, mode: str, arg: str) -> None:
        self.engine, self.entry, self.request_id, self.model = engine, entry, request_id, model
        self.chat, self.stream, self.options = chat, stream, options
        self.max_tokens, self.prompt_tokens, self.mode, self.arg = max_tokens, prompt_tokens, mode, arg
        self.id = "cmpl-" + request_id

    # -- bodies ---------------------------------------------------------------------------

    def usage(self, completion: int) -> bytes:
        prompt: bytes = b"%d" % self.prompt_tokens
        if self.mode == "usage":
            prompt = {"huge": b"1e400", "negative": b"-5", "string": b'"12"'}.get(self.arg, b"1e400")
        return b'{"prompt_tokens":%s,"total_tokens":%d,"completion_tokens":%d}' % (
            prompt, self.prompt_tokens + completion, completion)

    def whole(self, content: bytes | None = None) -> bytes:
        content = content if content is not None else b" ".join([b"tok"] * self.max_tokens)
        text = json.dumps(content.decode("latin-1")).encode()
        if self.chat:
            choice = b'{"index":0,"message":{"role":"assistant","content":%s},"finish_reason":"length"}' % text
            kind = b"chat.completion"
        else:
            choice = b'{"index":0,"text":%s,"finish_reason":"length"}' % text
            kind = b"text_completion"
        return b'{"id":"%s","object":"%s","created":%d,"model":%s,"choices":[%s],"usage":%s}' % (
            self.id.encode(), kind, int(time.time()), json.dumps(self.model).encode(), choice,
            self.usage(self.max_tokens))

    def events(self) -> list[tuple[bytes, int]]:
        """(event bytes, completion tokens it carries) for a streamed answer, [DONE] last."""
        continuous = bool(self.options.get("continuous_usage_stats"))
        include = bool(self.options.get("include_usage"))
        kind = b"chat.completion.chunk" if self.chat else b"text_completion"
        start = b'{"id":"%s","object":"%s","created":%d,"model":%s,"choices":' % (
            self.id.encode(), kind, int(time.time()), json.dumps(self.model).encode())
        out: list[tuple[bytes, int]] = []

        def event(choices: bytes, completion: int, tokens: int, usage: bool) -> None:
            tail = b',"usage":' + self.usage(completion) if usage else b""
            out.append((b"data: " + start + choices + tail + b"}\n\n", tokens))

        if self.chat:
            event(b'[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]',
                  0, 0, continuous)
        for i in range(1, self.max_tokens + 1):
            token = b"tok "
            if self.mode == "non_utf8" and i == 2:
                token = b"\xff\xfe\x80 "
            finish = b'"length"' if i == self.max_tokens else b"null"
            if self.chat:
                choice = b'[{"index":0,"delta":{"content":"%s"},"logprobs":null,"finish_reason":%s}]' % (token, finish)
            else:
                choice = b'[{"index":0,"text":"%s","logprobs":null,"finish_reason":%s}]' % (token, finish)
            event(choice, i, 1, continuous)
        if include:
            event(b"[]", self.max_tokens, 0, True)
        out.append((b"data: [DONE]\n\n", 0))
        return out

    # -- writing ----------------------------------------------------------------------------

    async def write(self, writer: asyncio.StreamWriter) -> bool:
        mode, arg = self.mode, self.arg
        if mode == "silence":
            await asyncio.sleep(3600)
            return False
        if mode == "reset":
            writer.write(response_head(200, [("content-type", "text/event-stream"), ("transfer-encoding", "chunked")]))
            await writer.drain()
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        if mode == "status":
            status = int(arg or 599)
            body = self.whole() if 200 <= status < 300 else compact(
                {"error": {"message": f"hostile status {status}", "type": "server_error", "param": None,
                           "code": status}})
            if 200 <= status < 300:
                self.entry["completion_tokens"] = self.max_tokens
            writer.write(response_head(status, [("content-type", "application/json"),
                                                ("content-length", str(len(body)))], "Weird") + body)
            await writer.drain()
            self.entry["finished"] = True
            return True
        if mode == "huge":
            size = int(arg or 60_000_000)
            body = self.whole(b"x" * size)
            writer.write(response_head(200, [("content-type", "application/json"),
                                              ("content-length", str(len(body)))]))
            view = memoryview(body)
            for at in range(0, len(body), 1 << 20):
                writer.write(view[at:at + (1 << 20)])
                await writer.drain()
            self.entry["completion_tokens"] = self.max_tokens
            self.entry["finished"] = True
            return True
        prefix = b""
        if mode == "interim":
            prefix = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
        if not self.stream:
            return await self._write_whole(writer, prefix)
        return await self._write_stream(writer, prefix)

    async def _write_whole(self, writer: asyncio.StreamWriter, prefix: bytes) -> bool:
        body = self.whole()
        headers = [("content-type", "application/json")]
        if self.mode == "gzip":
            body = gzip.compress(body)
            headers.append(("content-encoding", "gzip"))
        headers.append(("content-length", str(len(body))))
        data = prefix + response_head(200, headers, "OK") + body
        if self.mode == "slow_drip":
            await self._drip(writer, data)
        elif self.mode == "bad_chunk" or self.mode == "close_mid_chunk":
            writer.write(prefix + response_head(200, [("content-type", "application/json"),
                                                       ("transfer-encoding", "chunked")], "OK"))
            return await self._write_broken_chunks(writer, [(body, self.max_tokens)])
        else:
            writer.write(data)
            await writer.drain()
        self.entry["completion_tokens"] = self.max_tokens
        self.entry["finished"] = True
        return await self._after(writer)

    async def _write_stream(self, writer: asyncio.StreamWriter, prefix: bytes) -> bool:
        events = self.events()
        headers = [("content-type", "text/event-stream; charset=utf-8"), ("transfer-encoding", "chunked")]
        if self.mode in ("bad_chunk", "close_mid_chunk"):
            writer.write(prefix + response_head(200, headers, "OK"))
            return await self._write_broken_chunks(writer, events)
        compressor = None
        if self.mode == "gzip":
            headers.append(("content-encoding", "gzip"))
            compressor = zlib.compressobj(wbits=31)
        writer.write(prefix + response_head(200, headers, "OK"))
        for index, (data, tokens) in enumerate(events):
            if self.mode == "stall" and index == 2:
                await writer.drain()
                await asyncio.sleep(3600)
            if compressor is not None:
                data = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
            if self.mode == "slow_drip":
                await self._drip(writer, chunk(data))
            else:
                writer.write(chunk(data))
                await writer.drain()
            self.entry["completion_tokens"] += tokens
        tail = b""
        if compressor is not None:
            tail = chunk(compressor.flush())
        writer.write(tail + b"0\r\n\r\n")
        await writer.drain()
        self.entry["finished"] = True
        return await self._after(writer)

    async def _write_broken_chunks(self, writer: asyncio.StreamWriter, events: list[tuple[bytes, int]]) -> bool:
        if self.mode == "bad_chunk":
            first, tokens = events[0]
            writer.write(chunk(first) + b"zz\r\nnot hex\r\n")
            self.entry["completion_tokens"] += tokens
        else:
            first, tokens = events[0]
            writer.write(chunk(first) + b"%x\r\n%s" % (len(first) + 100, first))
            self.entry["completion_tokens"] += tokens
        await writer.drain()
        return False

    async def _drip(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        pause_s = float(self.arg or 10) / 1000
        for at in range(len(data)):
            writer.write(data[at:at + 1])
            await writer.drain()
            await asyncio.sleep(pause_s)

    async def _after(self, writer: asyncio.StreamWriter) -> bool:
        if self.mode != "stray":
            return True
        # A second response nobody asked for, on a connection the engine itself keeps alive.
        stray = b'{"stray":"an answer nobody asked for"}'
        data = response_head(200, [("content-type", "application/json"), ("content-length", str(len(stray)))],
                             "OK") + stray
        if self.arg:
            await asyncio.sleep(float(self.arg) / 1000)
        writer.write(data)
        await writer.drain()
        return True


async def serve(host: str, port: int) -> None:
    engine = Engine()
    server = await asyncio.start_server(engine.handle, host, port, limit=1 << 20)
    async with server:
        await server.serve_forever()


def start_hostile_engine(workdir: Path) -> tuple[Any, str]:
    """The hostile engine as its own process on loopback: (ServerProcess, base URL)."""
    from tests.servers import ServerProcess, clean_env, free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = ServerProcess([sys.executable, "-m", "tests.hostile_engine", "--port", str(port)],
                           env=clean_env(workdir / "hostile-home"), log_path=workdir / f"hostile-{port}.log",
                           health_url=f"{url}/health")
    return server.start(), url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
