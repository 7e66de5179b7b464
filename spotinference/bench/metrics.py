"""From raw per-request records to one level's figures, named as ``vllm bench serve`` names them.

Per (target, level): completed, failed (and why), duration, request / output / total token
throughput, TTFT, TPOT, ITL and end-to-end latency (mean, median, std, P90, P95, P99, in ms),
goodput against SLOs, and the engine's own view over the level (from ``/metrics``).

* TPOT excludes the first token: (E2E − TTFT) / (completion tokens − 1), per request.
* ITL is every gap between token-carrying chunks, pooled over the level's requests.
* Throughputs divide by the level's duration. With several targets interleaved in one level they
  share that duration, so each target's throughput is its share of the level's work.
* Token counts are the server's ``usage`` only.
* A non-streamed API (embeddings) has no TTFT, TPOT or ITL (null): its E2E is the whole request,
  and ``input_throughput`` (input tokens/s) is its throughput.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from ..errors import InputError

PERCENTILES = (90, 95, 99)
LATENCIES = ("ttft", "tpot", "itl", "e2el")
SLO_KEYS = {"ttft": "ttft", "tpot": "tpot", "e2el": "e2el", "e2e": "e2el"}


@dataclass(frozen=True)
class Slo:
    """``--goodput ttft:500 tpot:50``: a request is good when it meets every bound (ms)."""

    bounds_ms: dict[str, float]

    @classmethod
    def parse(cls, items: list[str] | None) -> Slo | None:
        if not items:
            return None
        bounds = {}
        for item in " ".join(items).replace(",", " ").split():
            name, _, value = item.partition(":")
            key = SLO_KEYS.get(name.strip().lower())
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if key is None or not number > 0:
                raise InputError(f"--goodput {item!r} is not METRIC:MS with METRIC one of ttft, tpot, e2el "
                                 "(e.g. --goodput ttft:500 tpot:50)")
            bounds[key] = number
        return cls(bounds)

    def met(self, request: dict[str, float]) -> bool:
        return all(request.get(key) is not None and request[key] <= bound for key, bound in self.bounds_ms.items())


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default, as vLLM uses)."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _stats(name: str, values_s: list[float]) -> dict[str, float | None]:
    values = [v * 1000 for v in values_s]
    out: dict[str, float | None] = {}
    if not values:
        for stat in ("mean", "median", "std", *(f"p{p}" for p in PERCENTILES)):
            out[f"{stat}_{name}_ms"] = None
        return out
    mean = sum(values) / len(values)
    out[f"mean_{name}_ms"] = mean
    out[f"median_{name}_ms"] = percentile(values, 50)
    out[f"std_{name}_ms"] = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    for p in PERCENTILES:
        out[f"p{p}_{name}_ms"] = percentile(values, p)
    return out


_VOLATILE = re.compile(r"(chatcmpl|cmpl)-[0-9a-zA-Z-]+|\b[0-9a-f]{12,}\b|\d+(\.\d+)?")


def reason_of(error: str) -> str:
    """Group failures by kind: ids and numbers out, the HTTP status kept."""
    head, _, rest = error.partition(": ")
    return f"{head}: {_VOLATILE.sub('#', rest)}"[:120] if rest else error[:120]


def summarize(records: list[dict[str, Any]], *, target: str, duration_s: float, slo: Slo | None) -> dict[str, Any]:
    mine = [r for r in records if r["target"] == target]
    ok = [r for r in mine if r["error"] is None]
    failed = [r for r in mine if r["error"] is not None]
    input_tokens = sum(r["prompt_tokens"] or 0 for r in ok)
    output_tokens = sum(r["completion_tokens"] or 0 for r in ok)
    duration = max(duration_s, 1e-9)
    per_request = []
    for r in ok:
        tokens = r["completion_tokens"] or 0
        tpot = (r["e2e"] - r["ttft"]) / (tokens - 1) if tokens > 1 and r["e2e"] is not None else None
        per_request.append({"ttft": r["ttft"], "tpot": tpot, "e2el": r["e2e"]})
    result: dict[str, Any] = {
        "target": target,
        "completed": len(ok),
        "failed": len(failed),
        "failure_reasons": dict(Counter(reason_of(r["error"]) for r in failed).most_common()),
        "first_error": failed[0]["error"][:200] if failed else None,  # records come in finishing order
        "duration": duration_s,
        "total_input_tokens": input_tokens,
        "total_output_tokens": output_tokens,
        "request_throughput": len(ok) / duration,
        "output_throughput": output_tokens / duration,
        "input_throughput": input_tokens / duration,
        "total_token_throughput": (input_tokens + output_tokens) / duration,
    }
    result.update(_stats("ttft", [p["ttft"] for p in per_request if p["ttft"] is not None]))  # none when not streamed
    result.update(_stats("tpot", [p["tpot"] for p in per_request if p["tpot"] is not None]))
    result.update(_stats("itl", [gap for r in ok for gap in r["itl"]]))
    result.update(_stats("e2el", [p["e2el"] for p in per_request]))
    if slo is not None:
        good = sum(slo.met({k: (v * 1000 if v is not None else None) for k, v in p.items()}) for p in per_request)
        result["good_requests"] = good
        result["request_goodput"] = good / duration
    return result


def added_latency(gateway: dict[str, Any], direct: dict[str, Any]) -> dict[str, float | None]:
    """The gateway's added latency: gateway − direct at the same statistic, same level, same load."""
    out: dict[str, float | None] = {}
    for name in ("ttft", "itl", "e2el"):
        for stat in ("mean", "median", *(f"p{p}" for p in PERCENTILES)):
            key = f"{stat}_{name}_ms"
            a, b = gateway.get(key), direct.get(key)
            out[f"added_{key}"] = None if a is None or b is None else a - b
    return out


def engine_view(engine: dict[str, Any] | None) -> dict[str, Any]:
    """The engine's own view over the level, from its /metrics (None where it has no /metrics)."""
    keys = ("engine_generation_tokens", "engine_prompt_tokens", "engine_max_requests_waiting",
            "engine_mean_requests_waiting", "engine_max_requests_running", "engine_max_kv_cache_usage",
            "engine_mean_kv_cache_usage")
    out: dict[str, Any] = dict.fromkeys(keys)
    if not engine or not engine.get("before") or not engine.get("after"):
        return out
    before, after, samples = engine["before"], engine["after"], engine.get("samples") or []
    for counter in ("generation_tokens", "prompt_tokens"):
        if counter in before and counter in after:
            out[f"engine_{counter}"] = round(after[counter] - before[counter])
    for gauge in ("requests_waiting", "requests_running", "kv_cache_usage"):
        values = [s[gauge] for s in samples if gauge in s]
        if values:
            out[f"engine_max_{gauge}"] = max(values)
            if f"engine_mean_{gauge}" in out:
                out[f"engine_mean_{gauge}"] = sum(values) / len(values)
    return out
