"""Benchmark: the gateway's memory and responsiveness while it relays a huge non-streamed answer.

    .venv/bin/python -m tests.benchmarks.gateway_memory [--mb 60] [--rounds 3] [--chunked]

Starts a stand-in engine in this process (tests/stand_in_engine.py, model ``huge``: one JSON
answer of --mb megabytes, usage at its end, as vLLM writes it) and `spot serve` in front of it
(max_response_body_bytes raised above the body), then per round downloads the answer through
the gateway while another client asks the gateway's ``/health`` every 20 ms. Prints the
gateway's RSS before and after each round and its peak (VmHWM), and ``/health`` latency during
the download (P50, max). The gateway should stay flat: it relays the body as it arrives and
finds the usage with a bounded scan, never holding or parsing the whole answer.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import aiohttp

from spotinference.keys import create_key
from spotinference.store import Store
from tests.servers import start_gateway
from tests.stand_in_engine import StandInEngine


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


async def one_round(url: str, key: str, size: int, chunked: bool) -> tuple[int, float, list[float]]:
    """Download the answer while polling /health; (bytes received, seconds, /health latencies)."""
    latencies: list[float] = []
    done = asyncio.Event()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        async def poll() -> None:
            while not done.is_set():
                started = time.perf_counter()
                async with session.get(f"{url}/health") as response:
                    await response.read()
                latencies.append(time.perf_counter() - started)
                await asyncio.sleep(0.02)

        poller = asyncio.create_task(poll())
        started = time.perf_counter()
        received = 0
        body = {"model": "huge", "prompt": "a", "body_bytes": size, "declare_length": not chunked}
        async with session.post(f"{url}/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"}) as response:
            assert response.status == 200, await response.text()
            async for piece in response.content.iter_chunked(1 << 16):
                received += len(piece)
        elapsed = time.perf_counter() - started
        done.set()
        await poller
    return received, elapsed, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=60, help="size of the engine's answer, in MB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunked", action="store_true", help="the engine sends no content-length")
    args = parser.parse_args()
    size = args.mb * 1024 * 1024
    with tempfile.TemporaryDirectory() as tmp, StandInEngine() as engine:
        home = Path(tmp) / "gw"
        key = create_key(Store(home), "bench").key
        gateway, url = start_gateway(home, {"huge": engine.url},
                                     extra_env={"SPOT_GATEWAY__MAX_RESPONSE_BODY_BYTES": str(size + (1 << 20))})
        try:
            assert gateway.proc is not None
            pid = gateway.proc.pid
            time.sleep(1.0)
            start_rss, _ = memory_mb(pid)
            print(f"gateway RSS at rest: {start_rss:.0f} MB; engine answer {args.mb} MB "
                  f"({'chunked' if args.chunked else 'content-length'}), {args.rounds} rounds")
            for n in range(1, args.rounds + 1):
                before, _ = memory_mb(pid)
                received, elapsed, latencies = asyncio.run(one_round(url, key, size, args.chunked))
                after, peak = memory_mb(pid)
                latencies.sort()
                p50 = latencies[len(latencies) // 2] * 1000 if latencies else float("nan")
                worst = latencies[-1] * 1000 if latencies else float("nan")
                print(f"round {n}: {received / 1e6:.1f} MB in {elapsed:.2f} s; RSS {before:.0f} -> {after:.0f} MB "
                      f"(peak so far {peak:.0f} MB); /health during it: {len(latencies)} calls, "
                      f"p50 {p50:.1f} ms, max {worst:.1f} ms")
        finally:
            gateway.stop()


if __name__ == "__main__":
    main()
