"""The gateway's memory and responsiveness while clients flood it with request headers, no key.

    .venv/bin/python -m tests.benchmarks.header_flood [--connections 3] [--mb 30] [--slow-seconds 30]

Starts `spot sim engine` and `spot serve` (defaults: gateway.max_header_bytes 64 KB,
gateway.header_timeout_s 10 s), then:

1. flood: ``--connections`` raw sockets each try to send ``--mb`` MB of request headers (8 KB
   lines, no Authorization) as fast as loopback takes them, while another thread times
   ``GET /health`` every 50 ms. Prints the gateway's RSS before and after (and its peak, sampled
   every 20 ms), what each flooding connection got back, and /health latency during the flood;
2. slowloris: one connection sends a header byte every 2 s; prints when and how the gateway
   closed it (the promise: at gateway.header_timeout_s, with a 408);
3. pipelined flood: ``--connections`` sockets each send small pipelined requests without a key
   for 3 s and never read the answers; prints RSS before and after, and /health latency.

Loopback only; everything it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from tests.servers import start_gateway, start_sim_engine

MODEL = "tiny-chat"
LINE = 8 * 1024


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def flood(url: str, megabytes: int, result: dict) -> None:
    host, port = url.removeprefix("http://").split(":")
    total = megabytes * 1024 * 1024
    sent = 0
    line = b"X-Flood: " + b"f" * (LINE - 12) + b"\r\n"
    began = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        try:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n")
            while sent < total:
                sock.sendall(line)
                sent += len(line)
            outcome = "all sent"
        except OSError as exc:
            outcome = f"gateway closed ({type(exc).__name__})"
        reply = b""
        try:
            sock.settimeout(5)
            while data := sock.recv(65536):
                reply += data
        except OSError:
            pass
    status = reply.split(b"\r\n", 1)[0].decode(errors="replace") or "(no reply)"
    result.update(sent_mb=sent / 2**20, outcome=outcome, status=status, seconds=time.monotonic() - began)


def probe_health(url: str, stop: threading.Event, latencies: list[float]) -> None:
    with httpx.Client(timeout=10) as client:
        while True:  # at least one probe, however short the flood
            began = time.perf_counter()
            client.get(f"{url}/health")
            latencies.append((time.perf_counter() - began) * 1000)
            if stop.wait(0.05):
                return


def sample_rss(pid: int, stop: threading.Event, peak: list[float]) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], rss_mb(pid))
        time.sleep(0.02)


def slowloris(url: str, limit_s: float) -> str:
    host, port = url.removeprefix("http://").split(":")
    began = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nX-Slow: ")
        sock.settimeout(2.0)
        reply = b""
        while time.monotonic() - began < limit_s:
            try:
                sock.sendall(b"s")
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as exc:
                return f"closed after {time.monotonic() - began:.1f} s ({type(exc).__name__}), reply {reply[:40]!r}"
            if not data:
                status = reply.split(b"\r\n", 1)[0].decode(errors="replace")
                return f"closed after {time.monotonic() - began:.1f} s, reply {status!r}"
            reply += data
        return f"STILL OPEN after {limit_s:.0f} s"


def pipelined_flood(url: str, seconds: float, result: dict) -> None:
    host, port = url.removeprefix("http://").split(":")
    requests = b"GET /v1/models HTTP/1.1\r\nHost: gateway\r\n\r\n" * 2000
    sent = 0
    outcome = f"still open after {seconds:.0f} s"
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and never read: answers pile up
        sock.settimeout(0.2)
        began = time.monotonic()
        while time.monotonic() - began < seconds:
            try:
                sent += sock.send(requests)
            except TimeoutError:
                continue
            except OSError as exc:
                outcome = f"gateway closed ({type(exc).__name__}) after {time.monotonic() - began:.2f} s"
                break
    result.update(sent_kb=sent / 1024, outcome=outcome)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=3)
    parser.add_argument("--mb", type=int, default=30, help="MB of headers each connection tries to send")
    parser.add_argument("--slow-seconds", type=float, default=30.0, help="give up on the slowloris connection after this")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="header-flood-") as tmp:
        work = Path(tmp)
        engine, engine_url = start_sim_engine(work)
        gateway, url = start_gateway(work / "gw", {MODEL: engine_url})
        try:
            assert gateway.proc is not None
            pid = gateway.proc.pid
            for _ in range(20):  # warm: the first requests load what every later one uses
                httpx.get(f"{url}/health")
            before = rss_mb(pid)
            stop = threading.Event()
            latencies: list[float] = []
            peak = [before]
            results: list[dict] = [{} for _ in range(args.connections)]
            helpers = [threading.Thread(target=probe_health, args=(url, stop, latencies)),
                       threading.Thread(target=sample_rss, args=(pid, stop, peak))]
            flooders = [threading.Thread(target=flood, args=(url, args.mb, results[i])) for i in range(args.connections)]
            for thread in helpers + flooders:
                thread.start()
            for thread in flooders:
                thread.join()
            time.sleep(0.5)
            stop.set()
            for thread in helpers:
                thread.join()
            after = rss_mb(pid)
            print(f"header flood: {args.connections} connections x {args.mb} MB of headers, no key")
            for i, r in enumerate(results):
                print(f"  connection {i}: {r['status']}; {r['outcome']} after {r['sent_mb']:.2f} MB in {r['seconds']:.2f} s")
            print(f"  gateway RSS: {before:.1f} MB before, {after:.1f} MB after, peak {peak[0]:.1f} MB")
            if latencies:
                ordered = sorted(latencies)
                p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
                print(f"  /health during the flood: {len(ordered)} probes, p50 {statistics.median(ordered):.2f} ms, "
                      f"p95 {p95:.2f} ms, max {ordered[-1]:.2f} ms")
            print(f"slowloris (one header byte every 2 s): {slowloris(url, args.slow_seconds)}")
            before = rss_mb(pid)
            stop = threading.Event()
            latencies = []
            results = [{} for _ in range(args.connections)]
            helpers = [threading.Thread(target=probe_health, args=(url, stop, latencies))]
            flooders = [threading.Thread(target=pipelined_flood, args=(url, 3.0, results[i])) for i in range(args.connections)]
            for thread in helpers + flooders:
                thread.start()
            for thread in flooders:
                thread.join()
            stop.set()
            helpers[0].join()
            print(f"pipelined flood: {args.connections} connections x 3 s of pipelined requests, no key, answers never read")
            for i, r in enumerate(results):
                print(f"  connection {i}: {r['outcome']}; {r['sent_kb']:.0f} KB sent")
            ordered = sorted(latencies)
            print(f"  gateway RSS: {before:.1f} MB before, {rss_mb(pid):.1f} MB after; /health during it: "
                  f"p50 {statistics.median(ordered):.2f} ms, max {ordered[-1]:.2f} ms ({len(ordered)} probes)")
            print(f"  gateway RSS after: {rss_mb(pid):.1f} MB; still serving: "
                  f"{httpx.get(f'{url}/health', timeout=5).json()}")
        finally:
            gateway.stop()
            engine.stop()


if __name__ == "__main__":
    main()
