"""The gateway's Prometheus metrics, in a registry of its own (one per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "spot_requests", "Requests answered, by model and HTTP status.", ["model", "status"], registry=self.registry
        )
        self.prompt_tokens = Counter(
            "spot_prompt_tokens", "Prompt tokens served (from the engine's usage).", ["model"], registry=self.registry
        )
        self.completion_tokens = Counter(
            "spot_completion_tokens", "Completion tokens served (from the engine's usage).", ["model"], registry=self.registry
        )
        self.in_flight = Gauge(
            "spot_requests_in_flight", "Requests being relayed now.", ["model"], registry=self.registry
        )
        self.upstream_latency = Histogram(
            "spot_upstream_latency_seconds", "Request start to last byte from the engine.", ["model"],
            buckets=_LATENCY_BUCKETS_S, registry=self.registry,
        )
        self.ttft = Histogram(
            "spot_time_to_first_token_seconds", "Request start to first token relayed (streams).", ["model"],
            buckets=_LATENCY_BUCKETS_S, registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
