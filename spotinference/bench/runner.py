"""A benchmark run: a sweep of load levels against one or more targets, with a saturation stop.

``run_bench(spec, executor, on_progress)`` builds each level's plan (``loadgen``'s format), has
the executor run it (here with ``local_executor``, or on a node over SSH with ``remote``),
summarises the raw records (``metrics``) and decides whether to go on. The library never prints:
progress arrives as ``BenchProgress`` callbacks and the CLI renders it.

Saturation stop (GuideLLM users burned GPUs past the knee, guidellm #242): a level is saturated
when its median TTFT rose by at least ``ttft_rise`` over the previous level while the level's
output throughput grew by less than ``min_gain`` over the best level so far; after ``levels``
saturated levels in a row the sweep ends. A level where every request failed also ends it.

A run where requests failed is not a clean measurement: ``check_failures`` raises
``BenchFailedError`` (exit 1) saying how many failed, per target, with the first error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..errors import InputError, SpotError
from . import loadgen
from .apis import APIS
from .metrics import Slo, added_latency, engine_view, summarize
from .prompts import PromptShape, build_bodies

TARGETS = ("gateway", "direct", "both")
DURATION_POOL = 2048  # prompts built for a --duration level; cycled past that


@dataclass(frozen=True)
class Target:
    name: str  # gateway | direct | on-node
    base_url: str
    key: str | None = None

    def endpoint(self, api: str) -> str:
        root = self.base_url.rstrip("/").removesuffix("/v1")
        return f"{root}{APIS[api].path}"

    def plan(self, api: str) -> dict[str, Any]:
        # The gateway takes each API's own way of sending the key; an engine only a bearer token.
        headers = APIS[api].headers(self.key, engine=self.name != "gateway")
        return {"name": self.name, "url": self.endpoint(api), "headers": headers}


@dataclass(frozen=True)
class Saturation:
    ttft_rise: float = 0.25
    min_gain: float = 0.05
    levels: int = 1


@dataclass(frozen=True)
class BenchSpec:
    model: str
    targets: list[Target]
    concurrencies: list[int] | None = None
    rates: list[float] | None = None
    requests: int | None = None
    duration_s: float | None = None
    warmup: int = 0
    shape: PromptShape = field(default_factory=PromptShape)
    api: str = "chat"
    slo: Slo | None = None
    seed: int = 0
    timeout_s: float = 600.0
    metrics_url: str | None = None
    metrics_interval_s: float = 1.0
    saturation: Saturation | None = field(default_factory=Saturation)

    def __post_init__(self) -> None:
        if not self.model:
            raise InputError("--model is required (the served model name)")
        if not self.targets:
            raise InputError("no target to benchmark")
        if (self.concurrencies is None) == (self.rates is None):
            raise InputError("give either --concurrency or --rate (not both)")
        if (self.requests is None) == (self.duration_s is None):
            raise InputError("give either --requests or --duration (not both)")
        if self.requests is not None and self.requests < 1:
            raise InputError(f"--requests must be 1 or more, got {self.requests}")
        if self.duration_s is not None and not self.duration_s > 0:
            raise InputError(f"--duration must be more than 0 seconds, got {self.duration_s}")
        if self.warmup < 0:
            raise InputError(f"--warmup must be 0 or more, got {self.warmup}")
        if self.api not in APIS:
            raise InputError(f"--api {self.api!r} is not one of: {', '.join(APIS)}")
        if not APIS[self.api].streamed and self.slo is not None and set(self.slo.bounds_ms) - {"e2el"}:
            raise InputError(f"--goodput {' '.join(sorted(set(self.slo.bounds_ms) - {'e2el'}))}: --api {self.api} "
                             "is not streamed, it has no TTFT or TPOT (use --goodput e2el:MS)")

    @property
    def levels(self) -> list[tuple[int | None, float | None]]:
        if self.concurrencies is not None:
            return [(c, None) for c in self.concurrencies]
        return [(None, r) for r in self.rates or []]

    def parameters(self) -> dict[str, Any]:
        return {
            "model": self.model, "targets": [t.name for t in self.targets],
            "urls": {t.name: t.base_url for t in self.targets},
            "load": "concurrency" if self.concurrencies is not None else "rate",
            "concurrency": self.concurrencies, "rate": self.rates, "requests": self.requests,
            "duration_s": self.duration_s, "warmup": self.warmup,
            "api": self.api,
            "input_tokens": None if self.shape.prompts_file else self.shape.input_tokens,
            "output_tokens": self.shape.output_tokens if APIS[self.api].streamed else None, "spread": self.shape.spread,
            "prompts_file": str(self.shape.prompts_file) if self.shape.prompts_file else None,
            "prompt_shape": self.shape.describe(generating=APIS[self.api].streamed),
            "goodput": self.slo.bounds_ms if self.slo else None, "seed": self.seed,
            "saturation": asdict(self.saturation) if self.saturation else None,
        }


@dataclass(frozen=True)
class BenchProgress:
    level: int  # 0-based index into the sweep
    levels: int
    label: str  # "concurrency 16" or "rate 4/s"
    phase: str  # warmup | measure | done
    done: int = 0
    failed: int = 0
    total: int | None = None
    elapsed_s: float = 0.0
    rows: list[dict[str, Any]] | None = None  # with phase "done": the level's results


@dataclass
class BenchRun:
    parameters: dict[str, Any]
    rows: list[dict[str, Any]]
    started_at: datetime
    finished_at: datetime
    stopped_reason: str | None = None
    warmup_output_tokens: int = 0
    run_id: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # tier, gpu, engine_version, usd_per_hour, on_node

    @property
    def requests(self) -> int:
        return sum(r["completed"] + r["failed"] for r in self.rows)

    @property
    def failed(self) -> int:
        return sum(r["failed"] for r in self.rows)

    @property
    def all_failed(self) -> bool:
        """No counted request completed: there is nothing measured to show or save."""
        return self.requests > 0 and self.failed == self.requests

    def failures(self) -> str | None:
        """Which targets had failed requests, each with its first error; None when none failed."""
        if not self.failed:
            return None
        urls = self.parameters.get("urls") or {}
        parts = []
        for name in dict.fromkeys(r["target"] for r in self.rows):
            mine = [r for r in self.rows if r["target"] == name]
            failed = sum(r["failed"] for r in mine)
            if failed:
                total = sum(r["completed"] + r["failed"] for r in mine)
                first = next((r["first_error"] for r in mine if r.get("first_error")), "unknown")
                parts.append(f"{name}: {failed} of {total} failed at {urls.get(name, '?')}, first: {first}")
        return "; ".join(parts)


class BenchFailedError(SpotError):
    """Requests of a benchmark failed: the run is not a clean measurement (exit 1)."""


def check_failures(run: BenchRun) -> None:
    """Raise ``BenchFailedError`` saying how many requests failed and the first error of each target."""
    if run.all_failed:
        raise BenchFailedError(f"every request failed ({run.failed} of {run.requests}), nothing measured: {run.failures()}")
    if run.failed:
        raise BenchFailedError(f"{run.failed} of {run.requests} requests failed ({run.failures()}); "
                               "the figures count only the completed ones")


Executor = Callable[[dict[str, Any], Callable[[dict[str, Any]], None]], dict[str, Any]]


def local_executor(plan: dict[str, Any], on_event: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    return asyncio.run(loadgen.run_level(plan, on_event))


def label(concurrency: int | None, rate: float | None) -> str:
    return f"concurrency {concurrency}" if concurrency is not None else f"rate {rate:g}/s"


def run_bench(spec: BenchSpec, executor: Executor = local_executor,
              on_progress: Callable[[BenchProgress], None] | None = None) -> BenchRun:
    report = on_progress or (lambda progress: None)
    started_at = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    stopped: str | None = None
    warm_tokens = 0
    history: list[tuple[float, float]] = []  # (level output throughput, level median TTFT)
    saturated = 0
    levels = spec.levels
    throughput_key, latency_key = saturation_figures(spec.api)
    for index, (concurrency, rate) in enumerate(levels):
        name = label(concurrency, rate)
        per_level = (spec.requests + spec.warmup) * len(spec.targets) if spec.requests else DURATION_POOL
        bodies = build_bodies(spec.shape, model=spec.model, api=spec.api, count=per_level, seed=spec.seed + index)
        plan = {
            "targets": [t.plan(spec.api) for t in spec.targets], "bodies": bodies, "api": spec.api,
            "concurrency": concurrency, "rate": rate, "requests": spec.requests, "duration_s": spec.duration_s,
            "warmup": spec.warmup, "seed": spec.seed + index, "timeout_s": spec.timeout_s,
            "metrics_url": spec.metrics_url, "metrics_interval_s": spec.metrics_interval_s,
        }
        total = spec.requests * len(spec.targets) if spec.requests else None

        def on_event(event: dict[str, Any], index: int = index, name: str = name) -> None:
            if event.get("event") == "phase":
                report(BenchProgress(index, len(levels), name, event["phase"], total=total))
            elif event.get("event") == "progress":
                report(BenchProgress(index, len(levels), name, "measure", event["done"], event["failed"],
                                     event.get("total"), event.get("elapsed_s", 0.0)))

        raw = executor(plan, on_event)
        warm_tokens += raw.get("warmup_output_tokens", 0)
        level_rows = level_results(spec, raw, concurrency, rate)
        rows.extend(level_rows)
        report(BenchProgress(index, len(levels), name, "done", sum(r["completed"] + r["failed"] for r in level_rows),
                             sum(r["failed"] for r in level_rows), total, raw["duration_s"], level_rows))
        if index == len(levels) - 1:
            break
        if all(r["completed"] == 0 for r in level_rows):
            stopped = f"stopped after {name}: every request failed"
            break
        throughput = sum(r[throughput_key] for r in level_rows)
        ttft = max(r[latency_key] or 0.0 for r in level_rows)
        rule = spec.saturation
        if rule is not None and history:
            best = max(t for t, _ in history)
            previous_ttft = history[-1][1]
            if ttft >= previous_ttft * (1 + rule.ttft_rise) and throughput < best * (1 + rule.min_gain):
                saturated += 1
            else:
                saturated = 0
            if saturated >= rule.levels:
                what = "TTFT" if latency_key == "median_ttft_ms" else "latency"
                kind = "output" if throughput_key == "output_throughput" else "input"
                stopped = (f"saturation stop after {name}: median {what} rose {previous_ttft:.0f} → {ttft:.0f} ms "
                           f"while {kind} throughput stayed at {throughput:.1f} tok/s "
                           f"(best {best:.1f}; needs +{rule.min_gain:.0%} to go on)")
                history.append((throughput, ttft))
                break
        history.append((throughput, ttft))
    return BenchRun(parameters=spec.parameters(), rows=rows, started_at=started_at, finished_at=datetime.now(UTC),
                    stopped_reason=stopped, warmup_output_tokens=warm_tokens)


def saturation_figures(api: str) -> tuple[str, str]:
    """What a sweep watches: (throughput, latency). A non-streamed API has no TTFT and generates
    nothing, so its knee is the whole request's latency against the input tokens it gets through."""
    return ("output_throughput", "median_ttft_ms") if APIS[api].streamed else ("input_throughput", "median_e2el_ms")


def level_results(spec: BenchSpec, raw: dict[str, Any], concurrency: int | None, rate: float | None) -> list[dict[str, Any]]:
    engine = engine_view(raw.get("engine"))
    rows = []
    for target in spec.targets:
        row: dict[str, Any] = {"target": target.name, "api": spec.api, "concurrency": concurrency,
                               "request_rate": rate if rate is not None else "inf",
                               "max_concurrency": concurrency}
        row.update(summarize(raw["records"], target=target.name, duration_s=raw["duration_s"], slo=spec.slo))
        row["target"] = target.name
        row.update(engine)
        rows.append(row)
    by_name = {r["target"]: r for r in rows}
    if "gateway" in by_name and "direct" in by_name:
        by_name["gateway"].update(added_latency(by_name["gateway"], by_name["direct"]))
    level_throughput = sum(r["output_throughput"] for r in rows)
    for row in rows:
        row["level_output_throughput"] = level_throughput
    return rows


def project_cost(run: BenchRun, usd_per_hour: float | None) -> None:
    """Projection at full utilisation: the tier's current rate over the level's measured output
    throughput (all targets of the level together: the engine did all that work). Not spend:
    `spot cost` reports what was actually billed."""
    run.meta["usd_per_hour"] = usd_per_hour
    for row in run.rows:
        throughput = row.get("level_output_throughput") or 0.0
        row["projected_usd_per_mtok_output"] = (
            usd_per_hour / (throughput * 3600) * 1_000_000 if usd_per_hour is not None and throughput > 0 else None
        )
