"""The engine's counters, rendered as vLLM's Prometheus ``/metrics`` text.

Names, label names, help strings and bucket bounds are vLLM's (v1 engine), so dashboards and
reconciliation code written against vLLM read the simulator unchanged. Updating a counter is an
integer add; formatting happens only when ``/metrics`` is scraped.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field

# vLLM's default bucket bounds (vllm/v1/metrics/buckets.py).
TTFT_BUCKETS_S = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                  10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
ITL_BUCKETS_S = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                 20.0, 40.0, 80.0)  # fmt: skip
REQUEST_LATENCY_BUCKETS_S = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                             60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip
FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")

CONTENT_TYPE = "text/plain; version=1.0.0; charset=utf-8"  # what vLLM 0.32 answers with


def request_tokens_buckets(max_model_len: int) -> tuple[float, ...]:
    """1-2-5 buckets up to the model length, as vLLM builds them for token-count histograms."""
    buckets: list[float] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_model_len:
                return tuple(float(b) for b in buckets)
            buckets.append(value)
        exponent += 1


def go_float(value: float) -> str:
    """Format a float the way prometheus_client does (Go-style exponents for big numbers)."""
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(float(value))
    dot = text.find(".")
    if value > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


@dataclass(slots=True)
class Histogram:
    bounds_s: Sequence[float]
    counts: list[int] = field(default_factory=list)  # per bucket, not cumulative
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds_s) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds_s, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)


@dataclass(slots=True)
class EngineMetrics:
    model_name: str
    max_model_len: int
    created_unix: float
    prompt_tokens: int = 0
    generation_tokens: int = 0
    finished: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FINISH_REASONS, 0))
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS_S))
    itl: Histogram = field(default_factory=lambda: Histogram(ITL_BUCKETS_S))
    e2e: Histogram = field(default_factory=lambda: Histogram(REQUEST_LATENCY_BUCKETS_S))
    queue_time: Histogram = field(default_factory=lambda: Histogram(REQUEST_LATENCY_BUCKETS_S))
    request_prompt_tokens: Histogram = field(init=False)
    request_generation_tokens: Histogram = field(init=False)

    def __post_init__(self) -> None:
        buckets = request_tokens_buckets(self.max_model_len)
        self.request_prompt_tokens = Histogram(buckets)
        self.request_generation_tokens = Histogram(buckets)

    def render(self, running: int, waiting: int, kv_cache_usage: float) -> str:
        """The Prometheus text exposition (format 0.0.4), as prometheus_client writes it."""
        model_label = f'model_name="{_escape_label(self.model_name)}"'
        labels = f'engine="0",{model_label}'  # prometheus_client sorts label names
        created = go_float(self.created_unix)
        out: list[str] = []

        def header(name: str, help_text: str, kind: str) -> None:
            out.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")

        def gauge(name: str, help_text: str, value: float) -> None:
            header(name, help_text, "gauge")
            out.append(f"{name}{{{labels}}} {go_float(value)}\n")

        def counter(name: str, help_text: str, values: list[tuple[str, float]]) -> None:
            header(f"{name}_total", help_text, "counter")
            out.extend(f"{name}_total{{{lbl}}} {go_float(v)}\n" for lbl, v in values)
            header(f"{name}_created", help_text, "gauge")
            out.extend(f"{name}_created{{{lbl}}} {created}\n" for lbl, _ in values)

        def histogram(name: str, help_text: str, hist: Histogram) -> None:
            header(name, help_text, "histogram")
            cumulative = 0
            for bound, count in zip([*hist.bounds_s, math.inf], hist.counts, strict=True):
                cumulative += count
                out.append(f'{name}_bucket{{engine="0",le="{go_float(bound)}",{model_label}}} {go_float(cumulative)}\n')
            out.append(f"{name}_count{{{labels}}} {go_float(cumulative)}\n")
            out.append(f"{name}_sum{{{labels}}} {go_float(hist.total)}\n")
            header(f"{name}_created", help_text, "gauge")
            out.append(f"{name}_created{{{labels}}} {created}\n")

        gauge("vllm:num_requests_running", "Number of requests in model execution batches.", running)
        gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", waiting)
        gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", kv_cache_usage)
        counter("vllm:prompt_tokens", "Number of prefill tokens processed.", [(labels, self.prompt_tokens)])
        counter("vllm:generation_tokens", "Number of generation tokens processed.", [(labels, self.generation_tokens)])
        counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [(f'engine="0",finished_reason="{reason}",{model_label}', n) for reason, n in self.finished.items()],
        )
        histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.", self.request_prompt_tokens)
        histogram(
            "vllm:request_generation_tokens", "Number of generation tokens processed.", self.request_generation_tokens
        )
        histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", self.ttft)
        histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", self.itl)
        histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", self.e2e)
        histogram(
            "vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", self.queue_time
        )
        return "".join(out)


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")

