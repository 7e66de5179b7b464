"""`spot bench`: throughput and latency measured through the gateway and directly.

Modules, one job each:

    loadgen   the load generator (closed loop / Poisson open loop); self-contained so
              `--on-node` can copy it to a node
    apis      one class per API benchmarked (chat, completions, responses, messages, embeddings):
              its request, its key header, how its answer reads; copied with loadgen
    prompts   synthetic prompts of a token length distribution, or a JSONL file
    metrics   raw records → vLLM-named figures (TTFT, TPOT, ITL, E2E, goodput, engine view)
    runner    the sweep: plans, executors, saturation stop, cost projection
    remote    the executor that runs the load generator on a node over its Transport
    tier      the tier's GPU and current rate; the engine's version
    results   runs in the store (bench_runs): save, list, compare
    plot      throughput against latency in the terminal

One sweep against real vLLM on the CPU, through the gateway and direct (the closing table of
issue 7), reproduced by hand::

    python -m tests.engines.real_vllm serve --port 18000 &            # real vLLM, tiny-chat
    spot serve --port 8080 --upstream tiny-chat=http://127.0.0.1:18000 &
    spot bench --base-url http://127.0.0.1:8080 --key "$(spot keys create bench --json | jq -r .key)" \
        --direct-url http://127.0.0.1:18000 --model tiny-chat --target both --api completions \
        --concurrency 1,4,16 --requests 16 --input-tokens 128 --output-tokens 128 --warmup 2
"""

from .metrics import Slo
from .prompts import PromptShape
from .runner import (BenchFailedError, BenchProgress, BenchRun, BenchSpec, Saturation, Target, check_failures,
                     project_cost, run_bench)

__all__ = ["BenchFailedError", "BenchProgress", "BenchRun", "BenchSpec", "PromptShape", "Saturation", "Slo",
           "Target", "check_failures", "project_cost", "run_bench"]
