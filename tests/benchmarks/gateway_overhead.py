"""Benchmark: what does the gateway add over calling the engine directly?

    .venv/bin/python -m tests.benchmarks.gateway_overhead [--rounds N] [--levels 1,16,64]
    .venv/bin/python -m tests.benchmarks.gateway_overhead --engine-url http://127.0.0.1:18000 --throughput
    .venv/bin/python -m tests.benchmarks.gateway_overhead --levels 1,64 --baseline 0c292d6
    .venv/bin/python -m tests.benchmarks.gateway_overhead --levels 1 --key-limits

Starts `spot sim engine` (32 tokens, one every 5 ms, as in shared/reference/gateway-performance.md)
and `spot serve` in front of it, nginx as a plain reverse proxy when it is installed (the
practical floor), tcp_relay.py (the floor of a proxy on Python's event loop) and asgi_relay.py
(the floor of a proxy on uvicorn: the gateway's streaming path without its work), then at each
concurrency level sends streamed chat requests from that many concurrent clients, each client
alternating direct / gateway / nginx / py-relay / asgi-relay requests so all targets share the
same load. With --baseline REF that commit's gateway runs too, as one more target in the same
rotation (tests/benchmarks/baseline.py): a before/after comparison measured in one run.
Prints time to first token and end-to-end latency at P50 and P95 per target, and the gateway's
added latency (gateway − direct at the same percentile).

With --throughput and an engine URL (e.g. real vLLM on the CPU), it instead measures output
tokens/s per stream at 64 streams, each client alternating direct and gateway requests so both
share the same load, and prints the ratio (target ≥ 97%).

With --key-limits the rotation also sends the gateway requests with a key that has rpm, tpm and
max-concurrent limits (set high enough never to refuse), and with a key that also has daily and
monthly budgets (priced from a seeded ledger: a billing sample and a request row), and prints
what each adds to TTFT over the key without (issue 23: ≤ 0.1 ms at one stream).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import os
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import aiohttp

from spotinference.key_settings import KeySettings
from spotinference.keys import create_key
from spotinference.store import Store
from tests.benchmarks.baseline import BaselineGateway
from tests.servers import ServerProcess, free_port, start_gateway, start_sim_engine

MODEL = "tiny-chat"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def one_request(session: aiohttp.ClientSession, url: str, headers: dict, max_tokens: int) -> tuple[float, float, int]:
    """(time to first token, end to end, completion tokens from the server's usage)."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    ttft = None
    tokens = 0
    async with session.post(url, json=body, headers=headers) as response:
        assert response.status == 200, await response.text()
        async for line in response.content:
            if ttft is None and line.startswith(b"data: {") and b'"content":"' in line and b'"content":""' not in line:
                ttft = time.perf_counter() - started
            elif line.startswith(b'data: {') and b'"choices":[]' in line:
                tokens = json.loads(line[6:])["usage"]["completion_tokens"]  # vLLM may merge tokens into one chunk
    return (ttft or 0.0), time.perf_counter() - started, tokens


async def latency_level(targets: dict[str, tuple[str, dict]], concurrency: int, rounds: int) -> dict[str, dict[str, list[float]]]:
    results = {name: {"ttft": [], "e2e": []} for name in targets}
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=4)  # under the engines' 5 s, as the gateway's pool
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


async def interleaved_throughput(targets: dict[str, tuple[str, dict]], concurrency: int, seconds: float,
                                 warmup_s: float) -> tuple[dict[str, list[tuple[int, float]]], dict[str, list[str]]]:
    """Each client alternates targets request by request, so all see the same load at once.

    Requests started in the first ``warmup_s`` are not counted (connection storms, vLLM's first
    batches). A failed request counts as client time that delivered no tokens: an engine that
    drops connections under load must not look faster for it (vLLM on 2 shared cores drops a
    few, which the gateway retries and a direct client cannot)."""
    results: dict[str, list[tuple[int, float]]] = {name: [] for name in targets}
    failures: dict[str, list[str]] = {name: [] for name in targets}
    names = list(targets)
    measure_from = time.perf_counter() + warmup_s
    deadline = measure_from + seconds
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=4)  # under the engines' 5 s, as the gateway's pool
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:
        async def client(index: int) -> None:
            turn = index
            while time.perf_counter() < deadline:
                name = names[turn % len(names)]
                url, headers = targets[name]
                turn += 1
                started = time.perf_counter()
                try:
                    _, e2e, tokens = await one_request(session, url, headers, 128)
                except (aiohttp.ClientError, AssertionError) as exc:
                    if started >= measure_from:
                        failures[name].append(f"{type(exc).__name__}: {str(exc)[:120]}")
                        results[name].append((0, time.perf_counter() - started))
                    continue
                if started >= measure_from:
                    results[name].append((tokens, e2e))
        await asyncio.gather(*(client(i) for i in range(concurrency)))
    return results, failures


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


def start_relay(work: Path, module: str, upstream: str) -> tuple[ServerProcess, str]:
    """One of the floor relays (tests/benchmarks/<module>.py) in front of the engine. It is up
    once the engine's /health answers through it."""
    port = free_port()
    command = [sys.executable, "-m", f"tests.benchmarks.{module}", str(port), upstream.removeprefix("http://")]
    url = f"http://127.0.0.1:{port}"
    return ServerProcess(command, env=dict(os.environ), log_path=work / f"{module}.log", health_url=f"{url}/health").start(), url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="1,16,64")
    parser.add_argument("--rounds", type=int, default=0, help="requests per client per target (default: 200 at 1 stream, 40 from 5 streams up)")
    parser.add_argument("--engine-url", help="use this engine instead of starting the simulator")
    parser.add_argument("--throughput", action="store_true", help="measure output tokens/s at 64 streams instead")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the throughput run")
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds of throughput load not counted")
    parser.add_argument("--key-limits", action="store_true",
                        help="also measure a key with rpm/tpm/max-concurrent limits against one without")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="the gateway's --log-level: info writes an access line per request, warning none")
    parser.add_argument("--baseline", metavar="REF",
                        help="also run this git commit's gateway as target gw@COMMIT, in the same rotation")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.baseline:  # before any server starts, so a failed install leaves none behind
            old = BaselineGateway(args.baseline, work)
            old.install()
            old_key = old.create_key()
        engine = None
        if args.engine_url:
            engine_url = args.engine_url
        else:
            engine, engine_url = start_sim_engine(work, extra=["--ttft-ms", "5", "--itl-ms", "5"])
        home = work / "gw"
        key = create_key(Store(home), "bench").key
        limited = create_key(Store(home), "bench-limits", KeySettings(rpm=10**9, tpm=10**15, max_concurrent=10**6)) \
            if args.key_limits else None  # before the gateway starts, which reads its keys then
        budgeted = create_key(Store(home), "bench-budgets", KeySettings(
            rpm=10**9, tpm=10**15, max_concurrent=10**6, daily_usd=Decimal(10**9), monthly_usd=Decimal(10**9))) \
            if args.key_limits else None
        if budgeted:
            _priced_ledger(Store(home))
        gateway, gateway_url = start_gateway(home, {MODEL: engine_url},
                                             extra_env={"SPOT_GATEWAY__LOG_LEVEL": args.log_level})
        baseline = None
        if args.baseline:
            baseline = old.start({MODEL: engine_url}, extra_env={"SPOT_GATEWAY__LOG_LEVEL": args.log_level})
        nginx = start_nginx(work, engine_url)
        relay, relay_url = start_relay(work, "tcp_relay", engine_url)
        asgi_relay, asgi_relay_url = start_relay(work, "asgi_relay", engine_url)
        auth = {"Authorization": f"Bearer {key}"}
        targets = {"direct": (f"{engine_url}/v1/chat/completions", {}),
                   "gateway": (f"{gateway_url}/v1/chat/completions", auth)}
        if baseline:
            targets[f"gw@{old.commit}"] = (f"{baseline[1]}/v1/chat/completions", {"Authorization": f"Bearer {old_key}"})
        if limited:
            targets["gw-limits"] = (f"{gateway_url}/v1/chat/completions", {"Authorization": f"Bearer {limited.key}"})
        if budgeted:
            targets["gw-budgets"] = (f"{gateway_url}/v1/chat/completions", {"Authorization": f"Bearer {budgeted.key}"})
        if nginx:
            targets["nginx"] = (f"{nginx[1]}/v1/chat/completions", {})
        targets["py-relay"] = (f"{relay_url}/v1/chat/completions", {})
        targets["asgi-relay"] = (f"{asgi_relay_url}/v1/chat/completions", {})
        try:
            if args.throughput:
                run_throughput(targets, args.seconds, args.warmup)
            else:
                run_latency(targets, [int(x) for x in args.levels.split(",")], args.rounds)
        finally:
            gateway.stop()
            if baseline:
                baseline[0].stop()
            if engine:
                engine.stop()
            if nginx:
                nginx[0].terminate()
            relay.stop()
            asgi_relay.stop()


def _priced_ledger(store: Store) -> None:
    """A billing sample and a request in the last hour: the gateway knows an invoice-true price."""
    from datetime import UTC, datetime, timedelta

    from tests.test_cost_queries import Seed

    seed = Seed(store)
    now = datetime.now(UTC)
    for at, total in ((now - timedelta(minutes=30), "0"), (now - timedelta(minutes=1), "1")):
        seed.sample(seed.run(at), at, "vm-1", total)
    seed.request(now - timedelta(minutes=10), 500_000, 500_000, key="warm-up")
    seed.write()


def run_latency(targets: dict, levels: list[int], rounds: int) -> None:
    print("streamed chat, 32 tokens; ms; added = target − direct at the same percentile")
    print(f"{'streams':>7} {'target':<11}{'ttft p50':>9}{'ttft p95':>9}{'e2e p50':>9}{'e2e p95':>9}"
          f"{'added ttft p50':>16}{'added ttft p95':>16}{'added e2e p95':>15}{'n':>6}")
    for level in levels:
        # At least ~600 samples per target above one stream: a P95 of fewer is a handful of
        # outliers on a shared machine.
        per_client = rounds or max(40, 200 // level)
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
            print(f"{level:>7} {name:<11}" + "".join(f"{v:>9.2f}" for v in row) + added + f"{len(got['ttft']):>6}")
        for target, what in (("gw-limits", "limits"), ("gw-budgets", "limits and budgets")):
            if target in results:
                plain, limited = results["gateway"]["ttft"], results[target]["ttft"]
                print(f"{level:>7} a key's {what} add {percentile(limited, 0.5) - percentile(plain, 0.5):+.3f} ms TTFT "
                      f"at P50, {percentile(limited, 0.95) - percentile(plain, 0.95):+.3f} ms at P95 ({target} − gateway)")


def run_throughput(targets: dict, seconds: float, warmup_s: float) -> None:
    # nginx, when installed, runs in the same rotation: the floor of any proxy process sharing
    # the engine's two cores.
    names = [name for name in targets if name in ("direct", "gateway", "nginx") or name.startswith("gw@")]
    print(f"output tokens/s per stream at 64 streams, 128-token replies, {seconds:g} s after {warmup_s:g} s of "
          f"warm-up, each client alternating {', '.join(names)} requests (tokens from the server's usage; "
          "a failed request is time that delivered none)")
    both = {name: targets[name] for name in names}
    results, failures = asyncio.run(interleaved_throughput(both, 64, seconds, warmup_s))
    rate = {}
    for name, runs in results.items():
        tokens, busy = sum(t for t, _ in runs), sum(e for _, e in runs)
        rate[name] = tokens / busy
        failed = failures[name]
        print(f"{name:<8} {rate[name]:8.1f} tok/s per stream  x64 = {rate[name] * 64:8.0f} tok/s  "
              f"({len(runs)} requests, {len(failed)} failed{': ' + failed[0] if failed else ''})")
    for name in rate:
        if name != "direct":
            print(f"{name} / direct = {rate[name] / rate['direct']:.1%}")


if __name__ == "__main__":
    main()
