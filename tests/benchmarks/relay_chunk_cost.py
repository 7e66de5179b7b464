"""Benchmark: the gateway's Python work per streamed chunk, this checkout against a baseline commit.

    .venv/bin/python -m tests.benchmarks.relay_chunk_cost [--baseline main] [--reads 50000]

In one process, with no sockets: an engine read (one HTTP chunk holding one SSE token event of
``/v1/completions`` with continuous usage, or three in one read) is handed to the upstream
connection's ``data_received``, parsed by httptools, cut by ``StreamState`` (the client asked for
``include_usage`` only, as `vllm bench serve` does) and sent through ``CallbackSender`` into
uvicorn's own ``send`` with a transport that drops the bytes. That is the per-token path of
``Relay._stream_sink`` minus the socket calls, which are the same as nginx's. The baseline's
``sse.py`` and ``upstream.py`` are read from git (``git show REF:...``) and imported beside this
checkout's, and the two are timed alternately (best of 5), so load on a shared machine hits both:
on these machines the end-to-end throughput benchmark cannot resolve a few percent.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from spotinference.gateway.callback_send import CallbackSender

REPO = Path(__file__).resolve().parents[2]
MODULES = ("sse", "upstream", "errors")  # what the chunk path imports from the gateway package
EVENT = (b'data: {"id":"cmpl-8c1f0a6f2d4b4a3e9f1b2c3d4e5f6a7b","object":"text_completion","created":1765000000,'
         b'"model":"tiny-chat","choices":[{"index":0,"text":" hello","logprobs":null,"finish_reason":null,'
         b'"stop_reason":null}],"usage":{"prompt_tokens":32,"total_tokens":40,"completion_tokens":8}}\n\n')
CHUNK = b"%x\r\n%s\r\n" % (len(EVENT), EVENT)


class _DroppingTransport:
    def write(self, data: bytes) -> None:
        pass


class _Flow:
    write_paused = False


class _Pool:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.read_timeout_s = 300.0
        self.total_timeout_s = 1800.0


def uvicorn_send() -> Any:
    """uvicorn's ``send`` for a started chunked response, writing to a transport that drops bytes."""
    cycle = RequestResponseCycle.__new__(RequestResponseCycle)
    cycle.flow = _Flow()
    cycle.disconnected = False
    cycle.response_started = True
    cycle.response_complete = False
    cycle.scope = {"method": "POST"}
    cycle.chunked_encoding = True
    cycle.transport = _DroppingTransport()
    return cycle.send


def chunk_path(package: str, loop: asyncio.AbstractEventLoop) -> Any:
    """An upstream connection mid-stream whose body goes, as in the relay, through StreamState and
    CallbackSender into uvicorn's send; returns its ``data_received``."""
    sse = importlib.import_module(f"{package}.sse")
    upstream = importlib.import_module(f"{package}.upstream")
    conn = upstream._Connection(_Pool(loop))
    response = conn.response = upstream.UpstreamResponse(conn)
    conn.in_head = True
    conn.data_received(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    sender = CallbackSender(uvicorn_send(), pause=lambda: None, resume=lambda: None, failed=lambda exc: None)
    state = sse.StreamState(client_include_usage=True, client_continuous_usage=False)
    state.one_choice = True
    state.first_token_seen = True
    feed, push = state.feed, sender.push

    def sink(data: bytes) -> None:  # Relay._stream_sink's steps for a token chunk
        out, _ = feed(data)
        if out:
            push({"type": "http.response.body", "body": out, "more_body": True})

    response._sink = sink
    return conn.data_received


def baseline_package(ref: str, into: Path) -> str:
    package = into / "baseline_gateway"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in MODULES:
        source = subprocess.run(["git", "-C", str(REPO), "show", f"{ref}:spotinference/gateway/{name}.py"],
                                check=True, capture_output=True).stdout
        (package / f"{name}.py").write_bytes(source)
    sys.path.insert(0, str(into))
    return package.name


async def compare(packages: dict[str, str], reads: int) -> None:
    loop = asyncio.get_running_loop()
    paths = {label: chunk_path(package, loop) for label, package in packages.items()}
    for events in (1, 3):
        data = CHUNK * events
        best = dict.fromkeys(paths, float("inf"))
        for _ in range(5):
            for label, received in paths.items():
                started = time.perf_counter()
                for _ in range(reads):
                    received(data)
                best[label] = min(best[label], (time.perf_counter() - started) / reads * 1e6)
        base, mine = best.values()
        print(f"{events} event(s) per read: " + ", ".join(f"{label} {us:.2f} us" for label, us in best.items())
              + f" per read ({mine / base - 1:+.0%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="main", help="the git commit to compare with")
    parser.add_argument("--reads", type=int, default=50_000, help="reads per timing")
    args = parser.parse_args()
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", f"{args.baseline}^{{commit}}"],
                            check=True, capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        packages = {f"@{commit}": baseline_package(commit, Path(tmp)), "this checkout": "spotinference.gateway"}
        asyncio.run(compare(packages, args.reads))


if __name__ == "__main__":
    main()
