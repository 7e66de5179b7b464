"""Benchmark: what the gateway's metrics cost per request, in process and shared between workers.

    .venv/bin/python -m tests.benchmarks.metrics_hot_path [--requests N]

Times one request's metric updates as the relay makes them (answered, in flight up and down, the
two token counters, the latency and TTFT histograms) with one worker's in-process values, then
with prometheus_client's multiprocess mode (``gateway.workers > 1``: every update also writes a
mmapped file), each in a fresh interpreter since the mode is chosen at import. Prints µs per request.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

ONE_RUN = """
import time
from spotinference.gateway.metrics import GatewayMetrics
metrics = GatewayMetrics()
model = metrics.model("tiny-chat")
def one():
    model.in_flight.inc()
    metrics.answered("tiny-chat", 200)
    model.prompt_tokens.inc(10)
    model.completion_tokens.inc(32)
    model.upstream_latency.observe(0.2)
    model.ttft.observe(0.02)
    model.in_flight.dec()
for _ in range(2000):
    one()
n = {n}
start = time.perf_counter()
for _ in range(n):
    one()
print((time.perf_counter() - start) / n * 1e6)
"""


def per_request_us(requests: int, multiproc_dir: str | None) -> float:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    if multiproc_dir:
        env["PROMETHEUS_MULTIPROC_DIR"] = multiproc_dir
    out = subprocess.run([sys.executable, "-c", ONE_RUN.format(n=requests)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return float(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        single = min(per_request_us(args.requests, None) for _ in range(3))
        shared = min(per_request_us(args.requests, directory) for _ in range(3))
    print(f"one worker (in process):      {single:.2f} µs per request")
    print(f"several workers (multiprocess): {shared:.2f} µs per request  (+{shared - single:.2f} µs)")


if __name__ == "__main__":
    main()
