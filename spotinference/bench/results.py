"""Benchmark runs in the store (``bench_runs``, migration 0007): save, list, read, compare."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..errors import InputError
from ..store import Store
from .apis import APIS
from .runner import BenchRun

# What `spot bench compare` sets side by side (and whether more is better).
COMPARED = (
    ("completed", True), ("failed", False), ("request_throughput", True), ("output_throughput", True),
    ("input_throughput", True), ("total_token_throughput", True), ("median_ttft_ms", False), ("p95_ttft_ms", False), ("p99_ttft_ms", False),
    ("median_tpot_ms", False), ("median_itl_ms", False), ("p99_itl_ms", False), ("median_e2el_ms", False),
    ("p99_e2el_ms", False), ("request_goodput", True), ("projected_usd_per_mtok_output", False),
)


@dataclass(frozen=True)
class RunSummary:
    run_id: int
    started_at: datetime
    tier: str | None
    on_node: str | None
    model: str
    gpu: str | None
    engine_version: str | None
    targets: str
    load: str
    prompt_shape: str
    stopped_reason: str | None
    levels: int
    best_output_throughput: float | None
    completed: int = 0  # counted requests over every target and level
    failed: int = 0
    api: str = "completions"  # what was benchmarked: chat, completions, responses, messages, embeddings

    def to_json(self) -> dict[str, Any]:
        return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in self.__dict__.items()}


def api_of(parameters: dict[str, Any]) -> str:
    """The API a saved run benchmarked; runs saved before `--api` say `endpoint` (chat or completions)."""
    return parameters.get("api") or parameters.get("endpoint") or "completions"


def save_run(store: Store, run: BenchRun) -> int:
    params, meta = run.parameters, run.meta
    with store.transaction() as con:
        (run_id,) = con.execute("SELECT coalesce(max(run_id), 0) + 1 FROM bench_runs").fetchone()
        con.execute(
            "INSERT INTO bench_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [run_id, run.started_at, run.finished_at, meta.get("tier"), meta.get("on_node"), params["model"],
             meta.get("gpu"), meta.get("engine_version"), ",".join(params["targets"]), params["load"],
             params["prompt_shape"], meta.get("usd_per_hour"), run.stopped_reason,
             json.dumps({**params, "warmup_output_tokens": run.warmup_output_tokens, "meta": meta}, default=str),
             json.dumps(run.rows, default=str)],
        )
    run.run_id = run_id
    return run_id


def list_runs(store: Store, limit: int = 50) -> list[RunSummary]:
    with store.reading() as con:
        rows = con.execute(
            "SELECT run_id, started_at, tier, on_node, model, gpu, engine_version, targets, load, prompt_shape,"
            " stopped_reason, results, parameters FROM bench_runs ORDER BY run_id DESC LIMIT ?", [limit]).fetchall()
    out = []
    for row in rows:
        results = json.loads(row[11])
        best_key = "output_throughput" if APIS[api_of(json.loads(row[12]))].streamed else "input_throughput"
        levels = len({(r.get("concurrency"), r.get("request_rate")) for r in results})
        best = max((r.get(best_key) or 0.0 for r in results), default=None)
        out.append(RunSummary(*row[:11], levels=levels, best_output_throughput=best,
                              completed=sum(r.get("completed") or 0 for r in results),
                              failed=sum(r.get("failed") or 0 for r in results), api=api_of(json.loads(row[12]))))
    return out


def get_run(store: Store, run_id: int) -> dict[str, Any]:
    with store.reading() as con:
        row = con.execute(
            "SELECT run_id, started_at, finished_at, tier, on_node, model, gpu, engine_version, targets, load,"
            " prompt_shape, usd_per_hour, stopped_reason, parameters, results FROM bench_runs WHERE run_id = ?",
            [run_id]).fetchone()
    if row is None:
        raise InputError(f"no benchmark run {run_id}", hint="`spot bench list` shows the saved runs")
    keys = ("run_id", "started_at", "finished_at", "tier", "on_node", "model", "gpu", "engine_version", "targets",
            "load", "prompt_shape", "usd_per_hour", "stopped_reason", "parameters", "results")
    data = dict(zip(keys, row, strict=True))
    data["parameters"] = json.loads(data["parameters"])
    data["results"] = json.loads(data["results"])
    data["api"] = api_of(data["parameters"])
    return data


def _level_key(row: dict[str, Any]) -> tuple[str, Any, Any]:
    return (row["target"], row.get("concurrency"), row.get("request_rate"))


def compare_runs(store: Store, first: int, second: int) -> dict[str, Any]:
    """The two runs' rows matched by (target, level), each compared figure with its delta.

    Runs of two generating APIs compare (how much slower is Responses than chat?), and the answer
    says the APIs differ; a non-streamed API against a streamed one measures different things
    (no TTFT, no output), so that is refused."""
    a, b = get_run(store, first), get_run(store, second)
    if APIS[a["api"]].streamed != APIS[b["api"]].streamed:
        raise InputError(f"run {first} benchmarked --api {a['api']} and run {second} --api {b['api']}: one is not "
                         "streamed (latency, input tok/s) and the other is (TTFT, output tok/s), so their figures "
                         "do not compare", hint="compare two runs of embeddings, or two of the generating APIs")
    rows_a = {_level_key(r): r for r in a["results"]}
    rows_b = {_level_key(r): r for r in b["results"]}
    keys = list(rows_a) + [k for k in rows_b if k not in rows_a]
    pairs = []
    for key in keys:
        ra, rb = rows_a.get(key), rows_b.get(key)
        figures = []
        for name, higher_is_better in COMPARED:
            va = ra.get(name) if ra else None
            vb = rb.get(name) if rb else None
            if va is None and vb is None:
                continue
            delta = vb - va if isinstance(va, int | float) and isinstance(vb, int | float) else None
            relative = delta / va if delta is not None and va else None
            better = None if not delta else (delta > 0) == higher_is_better
            figures.append({"metric": name, "a": va, "b": vb, "delta": delta, "relative": relative, "better": better})
        pairs.append({"target": key[0], "concurrency": key[1], "request_rate": key[2], "figures": figures})
    strip = ("parameters", "results")
    return {"a": {k: v for k, v in a.items() if k not in strip}, "b": {k: v for k, v in b.items() if k not in strip},
            "same_api": a["api"] == b["api"], "levels": pairs}
