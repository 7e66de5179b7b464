"""The throughput benchmark (tests/benchmarks/gateway_throughput.py) keeps working: its quick
mode's code path, against real vLLM, with vLLM's own `vllm bench serve` as the client.

Nothing here is timed: the figures are the benchmark's to print. What is checked is what the
benchmark promises to report: every target measured (a baseline commit's gateway among them),
no failed request, each gateway's token log equal to vLLM's counters over its round, and a table
row per target.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.benchmarks.gateway_throughput import QUICK, table
from tests.benchmarks.gateway_throughput import run as run_benchmark


@pytest.mark.slow
def test_the_quick_throughput_benchmark_measures_every_target(vllm_engine: str, tmp_path: Path) -> None:
    runs = run_benchmark(QUICK, vllm_engine, tmp_path, baseline="HEAD", echo=lambda _: None)
    names = {r.target for r in runs}
    (baseline_name,) = [name for name in names if name.startswith("gw@")]
    assert {"direct", "direct+cus", "gateway"} <= names
    for r in runs:
        assert r.failed == 0, r
        assert r.output_tokens == QUICK.prompts * QUICK.output_len, r  # --ignore-eos: every token made
        assert r.output_tok_s > 0 and r.tpot_p99 >= r.tpot_p50 > 0, r
    for name in ("gateway", baseline_name):
        (gateway,) = [r for r in runs if r.target == name]
        assert gateway.tokens_check.startswith("EQUAL:"), gateway.tokens_check
        assert gateway.proxy_cpu_s is not None and gateway.proxy_cpu_s > 0  # the gateway's own process did work
    lines = table(runs, QUICK.levels)
    assert len(lines) == 1 + len(names)
    assert all(any(line.split()[1] == name for line in lines[1:]) for name in names)
