"""The gateway's Prometheus metrics, in a registry of its own (one per app).

With ``gateway.workers > 1`` each worker is a process of its own and a scrape reaches one of
them, so the counters, histograms and gauges the relay updates live in prometheus_client's
multiprocess mode: each worker writes its values into mmapped files under
``<home>/gateway/prometheus`` (emptied by ``spot serve`` before the workers start), and a scrape
sums every worker's files. A worker that stops marks itself dead, which drops its live gauges
(requests in flight, held requests) while its counters stay counted. One worker keeps the
in-process values: nothing to share.

Cost on the hot path (one request's updates: answered, in flight up and down, two token
counters, two histograms), ``python -m tests.benchmarks.metrics_hot_path`` on the 2-core dev box:
3.0 µs per request in process, 8.1 µs shared between workers (+5.1 µs, nine mmapped writes under
prometheus_client's lock). One worker's path is unchanged: ``python -m
tests.benchmarks.gateway_overhead --levels 1 --baseline main`` measured the gateway's added TTFT
at P50 0.69 ms against main's 0.68 ms, P95 1.52 against 1.61 ms.

Held requests are a tier controller's queue in each worker: every worker publishes its count
into ``spot_tier_held_requests`` every ``HELD_PUBLISH_S`` (and before it answers a scrape or
/health), so the summed figure lags a change in another worker by at most that.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

FAILURE_SIDES = ("client", "engine", "gateway")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
HELD_PUBLISH_S = 0.25


def share_between_workers(directory: Path) -> None:
    """Called by ``spot serve`` before it starts several workers: they inherit the variable and
    write their values under ``directory``, emptied first so a previous run's counts are gone."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(directory)


_WAKE_BUCKETS_S = (5, 10, 20, 30, 45, 60, 90, 120, 180, 240, 300, 480, 600, 900, 1200)
_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


@dataclass(frozen=True)
class ModelMetrics:
    """One model's label children."""

    in_flight: Any
    prompt_tokens: Any
    completion_tokens: Any
    upstream_latency: Any
    ttft: Any
    unknown_usage: Any


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()  # what a scrape reads
        self.multiprocess_dir = os.environ.get(MULTIPROC_ENV) or None
        if self.multiprocess_dir:
            from prometheus_client.multiprocess import MultiProcessCollector

            self._files = MultiProcessCollector(self.registry, self.multiprocess_dir)
        # Shared between workers through the files, the relay's metrics are registered nowhere:
        # the collector above reads them all.
        shared = None if self.multiprocess_dir else self.registry
        self.requests = Counter(
            "spot_requests", "Requests answered, by model and HTTP status.", ["model", "status"], registry=shared
        )
        self.prompt_tokens = Counter(
            "spot_prompt_tokens", "Prompt tokens served (from the engine's usage).", ["model"], registry=shared
        )
        self.completion_tokens = Counter(
            "spot_completion_tokens", "Completion tokens served (from the engine's usage).", ["model"], registry=shared
        )
        self.failures = Counter(
            "spot_request_failures", "Requests that failed, by the side at fault: client (a request the gateway "
            "could not read), engine (an answer it could not relay or bill), gateway (its own error).",
            ["side"], registry=shared,
        )
        for side in FAILURE_SIDES:  # at 0 from the start, so rate() and increase() see the first
            self.failures.labels(side)
        self.unknown_usage = Counter(
            "spot_unknown_usage_requests", "Requests the engine worked on whose token counts are unknown "
            "(no usage arrived: a stream aborted before its first chunk, a non-streamed client that left).",
            ["model"], registry=shared,
        )
        self.in_flight = Gauge(
            "spot_requests_in_flight", "Requests being relayed now.", ["model"], registry=shared,
            multiprocess_mode="livesum",
        )
        self.held = Gauge(
            "spot_tier_held_requests", "Requests held while the tier wakes.", ["tier"], registry=shared,
            multiprocess_mode="livesum",
        )
        self.wake_seconds = Histogram(
            "spot_tier_wake_seconds", "How long each finished wake took, from its start to serving.", ["tier"],
            buckets=_WAKE_BUCKETS_S, registry=shared,
        )
        self.failovers = Counter(
            "spot_tier_failovers", "Times a tier could not serve and sent its traffic to its fallback "
            "(or, without one, refused it).", ["tier"], registry=shared,
        )
        self.upstream_latency = Histogram(
            "spot_upstream_latency_seconds", "Request start to last byte from the engine.", ["model"],
            buckets=_LATENCY_BUCKETS_S, registry=shared,
        )
        self.ttft = Histogram(
            "spot_time_to_first_token_seconds", "Request start to first token relayed (streams).", ["model"],
            buckets=_LATENCY_BUCKETS_S, registry=shared,
        )

        # Label children per model, looked up once: prometheus_client's labels() validates and
        # locks on every call, and the relay needs them on every request.
        self._by_model: dict[str, ModelMetrics] = {}
        self._requests: dict[tuple[str, int], Any] = {}
        self._tiers_seen: set[str] = set()

    def model(self, model: str) -> ModelMetrics:
        found = self._by_model.get(model)
        if found is None:
            found = self._by_model[model] = ModelMetrics(
                self.in_flight.labels(model), self.prompt_tokens.labels(model), self.completion_tokens.labels(model),
                self.upstream_latency.labels(model), self.ttft.labels(model), self.unknown_usage.labels(model),
            )
        return found

    def answered(self, model: str, status: int) -> None:
        child = self._requests.get((model, status))
        if child is None:
            child = self._requests[(model, status)] = self.requests.labels(model, str(status))
        child.inc()

    def failed(self, side: str) -> None:
        """A request failed, and ``side`` ("client", "engine" or "gateway") caused it."""
        self.failures.labels(side).inc()

    def track_tiers(self, snapshots: Callable[[], list[dict[str, Any]]]) -> None:
        """Per-tier gauges, read from the tier controllers at scrape time."""
        self._snapshots = snapshots
        self.registry.register(_TierCollector(snapshots))

    def decision(self, tier: str, detail: dict[str, Any]) -> None:
        """A tier's recorded decision (FleetRuntime.on_decision): wakes and failovers are counted."""
        if detail.get("kind") == "woke":
            self.wake_seconds.labels(tier).observe(detail["wake_s"])
        elif detail.get("kind") == "failover":
            self.failovers.labels(tier).inc()

    _snapshots: Callable[[], list[dict[str, Any]]] | None = None

    def publish_held(self) -> list[dict[str, Any]]:
        """This worker's held requests into ``spot_tier_held_requests``; returns the snapshots."""
        snapshots = self._snapshots() if self._snapshots is not None else []
        for snap in snapshots:
            self.held.labels(snap["tier"]).set(snap["held_requests"])
            if snap["tier"] not in self._tiers_seen:  # series at 0 from the start, so increase() sees the first
                self._tiers_seen.add(snap["tier"])
                self.failovers.labels(snap["tier"])
                self.wake_seconds.labels(snap["tier"])
        return snapshots

    async def publish_held_forever(self) -> None:
        """With several workers, keeps this worker's share of the held figure current."""
        if not self.multiprocess_dir or self._snapshots is None:
            return
        while True:
            self.publish_held()
            await asyncio.sleep(HELD_PUBLISH_S)

    def tier_snapshots(self) -> list[dict[str, Any]]:
        """The tiers as /health shows them, ``held_requests`` summed over every worker."""
        snapshots = self.publish_held()
        if not self.multiprocess_dir:
            return snapshots
        held = {sample.labels["tier"]: sample.value for family in self._files.collect()
                if family.name == "spot_tier_held_requests" for sample in family.samples}
        return [{**snap, "held_requests": int(held.get(snap["tier"], snap["held_requests"]))} for snap in snapshots]

    def worker_stopped(self) -> None:
        """This worker's live gauges leave the shared figures; its counters stay counted."""
        if self.multiprocess_dir:
            from prometheus_client.multiprocess import mark_process_dead

            mark_process_dead(os.getpid(), self.multiprocess_dir)

    def track_gate(self, state: Callable[[], Any]) -> None:
        """The budget gate's state, read at scrape time."""
        self.registry.register(_GateCollector(state))

    def render(self) -> bytes:
        self.publish_held()
        return generate_latest(self.registry)


TIER_STATES = ("serving", "waking", "asleep", "unhealthy", "hibernating", "degraded")


class _TierCollector(Collector):
    def __init__(self, snapshots: Callable[[], list[dict[str, Any]]]) -> None:
        self.snapshots = snapshots

    def collect(self):  # noqa: ANN201 - prometheus_client's protocol
        state = GaugeMetricFamily("spot_tier_state", "1 for the tier's current state.", labels=["tier", "state"])
        wake = GaugeMetricFamily("spot_tier_wake_elapsed_seconds", "Seconds since the current wake began (0: none).", labels=["tier"])
        idle = GaugeMetricFamily("spot_tier_idle_countdown_seconds", "Seconds until the idle tier hibernates (-1: not counting down).", labels=["tier"])
        last = GaugeMetricFamily("spot_tier_last_request_timestamp_seconds", "Unix time of the tier's last request (0: none).", labels=["tier"])
        for snap in self.snapshots():
            tier = snap["tier"]
            for name in TIER_STATES:
                state.add_metric([tier, name], 1.0 if snap["state"] == name else 0.0)
            wake.add_metric([tier], snap["wake_elapsed_s"] or 0.0)
            idle.add_metric([tier], -1.0 if snap["idle_countdown_s"] is None else snap["idle_countdown_s"])
            last.add_metric([tier], snap["last_request_at"] or 0.0)
        yield from (state, wake, idle, last)


class _GateCollector(Collector):
    def __init__(self, state: Callable[[], Any]) -> None:
        self.state = state

    def collect(self):  # noqa: ANN201 - prometheus_client's protocol
        gate = self.state()
        is_open = GaugeMetricFamily("spot_budget_gate_open", "1 while the budget gate lets requests through.", labels=["reason"])
        is_open.add_metric([gate.reason], 1.0 if gate.open else 0.0)
        spend = GaugeMetricFamily("spot_spend_today_usd", "Today's spend from billing samples (-1: unknown).")
        spend.add_metric([], float(gate.spend_today_usd) if gate.spend_today_usd is not None else -1.0)
        age = GaugeMetricFamily("spot_billing_sample_age_seconds", "Age of the last good billing sample (-1: none).")
        age.add_metric([], gate.sample_age_s if gate.sample_age_s is not None else -1.0)
        yield from (is_open, spend, age)
