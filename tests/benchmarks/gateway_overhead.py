"""Benchmark: what does the gateway add over calling the engine directly?

    .venv/bin/python -m tests.benchmarks.gateway_overhead [--requests N] [--levels 1,16,64]
    .venv/bin/python -m tests.benchmarks.gateway_overhead --engine-url http://127.0.0.1:18000 --throughput

Starts `spot sim engine` (32 tokens, one every 5 ms, as in shared/reference/gateway-performance.md)
and `spot serve` in front of it, optionally nginx as a plain reverse proxy (the practical floor),
then at each concurrency level sends streamed chat requests from that many concurrent clients,
each client alternating direct / gateway (/ nginx) requests so all targets share the same load.
Prints time to first token and end-to-end latency at P50 and P95 per target, and the gateway's
added latency (gateway − direct at the same percentile).

With --throughput and an engine URL (e.g. real vLLM on the CPU), it instead measures output
tokens/s at 64 streams through the gateway and directly, in alternating phases, and prints the
ratio (target ≥ 97%).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp

from spotinference.keys import create_key
from spotinference.store import Store
from tests.servers import free_port, start_gateway, start_sim_engine

MODEL = "tiny-chat"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def one_request(session: aiohttp.ClientSession, url: str, headers: dict, max_tokens: int) -> tuple[float, float, int]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens,
            "ignore_eos": True, "stream": True}
    started = time.perf_counter()
    ttft = None
    tokens = 0
    async with session.post(url, json=body, headers=headers) as response:
        assert response.status == 200, await response.text()
        async for line in response.content:
            if line.startswith(b"data: {") and (b'"content":"' in line and b'"content":""' not in line):
                tokens += 1
                if ttft is None:
                    ttft = time.perf_counter() - started
    return (ttft or 0.0), time.perf_counter() - started, tokens


async def latency_level(targets: dict[str, tuple[str, dict]], concurrency: int, rounds: int) -> dict[str, dict[str, list[float]]]:
    results = {name: {"ttft": [], "e2e": []} for name in targets}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:
        names = list(targets)

        async def client(index: int) -> None:
            for turn in range(rounds * len(names)):
                name = names[(index + turn) % len(names)]
                url, headers = targets[name]
                ttft, e2e, _ = await one_request(session, url, headers, 32)
                results[name]["ttft"].append(ttft * 1000)
                results[name]["e2e"].append(e2e * 1000)

        # Warm-up: open keep-alive connections on every path before measuring.
        await asyncio.gather(*(one_request(session, u, h, 4) for u, h in targets.values() for _ in range(min(concurrency, 8))))
        await asyncio.gather(*(client(i) for i in range(concurrency)))
    return results


async def throughput_phase(url: str, headers: dict, concurrency: int, seconds: float) -> float:
    tokens = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:
        async def client() -> None:
            nonlocal tokens
            while time.perf_counter() < deadline:
                _, _, got = await one_request(session, url, headers, 128)
                tokens += got
        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return tokens / (time.perf_counter() - started)


def start_nginx(workdir: Path, upstream: str) -> tuple[subprocess.Popen, str] | None:
    binary = shutil.which("nginx")
    if binary is None:
        return None
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(f"""
worker_processes 1; daemon off; pid {workdir}/nginx.pid; error_log {workdir}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  upstream engine {{ server {upstream.removeprefix('http://')}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{ proxy_pass http://engine; proxy_http_version 1.1; proxy_set_header Connection "";
                  proxy_buffering off; }}
  }}
}}
""")
    proc = subprocess.Popen([binary, "-c", str(conf), "-p", str(workdir)], stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return proc, f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="1,16,64")
    parser.add_argument("--rounds", type=int, default=0, help="requests per client per target (default: 200 at 1, fewer higher)")
    parser.add_argument("--engine-url", help="use this engine instead of starting the simulator")
    parser.add_argument("--throughput", action="store_true", help="measure output tokens/s at 64 streams instead")
    parser.add_argument("--seconds", type=float, default=20.0, help="per throughput phase")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        engine = None
        if args.engine_url:
            engine_url = args.engine_url
        else:
            engine, engine_url = start_sim_engine(work, extra=["--ttft-ms", "5", "--itl-ms", "5"])
        home = work / "gw"
        key = create_key(Store(home), "bench").key
        gateway, gateway_url = start_gateway(home, {MODEL: engine_url})
        nginx = start_nginx(work, engine_url)
        auth = {"Authorization": f"Bearer {key}"}
        targets = {"direct": (f"{engine_url}/v1/chat/completions", {}),
                   "gateway": (f"{gateway_url}/v1/chat/completions", auth)}
        if nginx:
            targets["nginx"] = (f"{nginx[1]}/v1/chat/completions", {})
        try:
            if args.throughput:
                run_throughput(targets, args.seconds)
            else:
                run_latency(targets, [int(x) for x in args.levels.split(",")], args.rounds)
        finally:
            gateway.stop()
            if engine:
                engine.stop()
            if nginx:
                nginx[0].terminate()


def run_latency(targets: dict, levels: list[int], rounds: int) -> None:
    print("streamed chat, 32 tokens; ms; added = target − direct at the same percentile")
    print(f"{'streams':>7} {'target':<8}{'ttft p50':>9}{'ttft p95':>9}{'e2e p50':>9}{'e2e p95':>9}"
          f"{'added ttft p50':>16}{'added ttft p95':>16}{'added e2e p95':>15}{'n':>6}")
    for level in levels:
        per_client = rounds or max(3, 200 // level)
        results = asyncio.run(latency_level(targets, level, per_client))
        base = results["direct"]
        for name, got in results.items():
            row = [percentile(got["ttft"], 0.5), percentile(got["ttft"], 0.95),
                   percentile(got["e2e"], 0.5), percentile(got["e2e"], 0.95)]
            added = ""
            if name != "direct":
                added = (f"{row[0] - percentile(base['ttft'], 0.5):>16.2f}{row[1] - percentile(base['ttft'], 0.95):>16.2f}"
                         f"{row[3] - percentile(base['e2e'], 0.95):>15.2f}")
            else:
                added = f"{'':>16}{'':>16}{'':>15}"
            print(f"{level:>7} {name:<8}" + "".join(f"{v:>9.2f}" for v in row) + added + f"{len(got['ttft']):>6}")


def run_throughput(targets: dict, seconds: float) -> None:
    print(f"output tokens/s at 64 streams, 128-token replies, alternating {seconds:g} s phases")
    totals = {"direct": [], "gateway": []}
    for _ in range(2):
        for name in ("direct", "gateway"):
            url, headers = targets[name]
            totals[name].append(asyncio.run(throughput_phase(url, headers, 64, seconds)))
    direct, gateway = statistics.mean(totals["direct"]), statistics.mean(totals["gateway"])
    print(f"direct   {direct:10.1f} tok/s  (phases: {', '.join(f'{v:.1f}' for v in totals['direct'])})")
    print(f"gateway  {gateway:10.1f} tok/s  (phases: {', '.join(f'{v:.1f}' for v in totals['gateway'])})")
    print(f"gateway / direct = {gateway / direct:.1%}")


if __name__ == "__main__":
    main()
