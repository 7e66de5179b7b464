"""The load generator: requests of one API at a fixed concurrency or Poisson arrivals.

SELF-CONTAINED ON PURPOSE: this file imports only the standard library, aiohttp and its sibling
``apis`` (itself standard library only), never the rest of ``spotinference``, because ``spot
bench --on-node`` copies both files to the node and runs this one there with whichever Python has
aiohttp (vLLM's own environment has it):

    python3 loadgen.py PLAN.json RESULT.json     # progress as JSON lines on stdout

One call runs one level and returns raw per-request records; ``metrics`` turns them into
figures. A plan (a JSON-able dict)::

    targets      [{"name": "gateway", "url": "http://…/v1/completions", "headers": {...}}, ...]
    bodies       request bodies, ready to send (``apis`` made them), cycled
    api          which API the URLs serve (a name in ``apis.APIS``): how the answers are read
    concurrency  closed loop: that many workers, each sending its next request when one ends
    rate         open loop: requests per second with Poisson (exponential) inter-arrival times
    requests     counted requests per target, or None with duration_s: keep sending until then
    warmup       requests per target sent first and not counted (their tokens are reported)
    metrics_url  the engine's root URL: /metrics is scraped before, during and after the level

With several targets every worker alternates them request by request (open loop: arrival by
arrival), so each target sees the same load at the same time.

Times come from ``time.perf_counter``. TTFT is the first event that carries generated text (a
chat stream's role-only chunk is not one; each API's reader in ``apis`` decides); ITL is the gap
between consecutive such events (vLLM may merge several tokens into one chunk under load: then
that gap covers them all, as in ``vllm bench serve``); E2E ends at the last one. A non-streamed
API (embeddings) has no TTFT or ITL: its E2E is the whole request. Token counts come only from
the API's own final usage.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections.abc import Callable
from typing import Any

import aiohttp

try:
    from . import apis
except ImportError:  # run as a script on a node, next to its copy of apis.py
    import apis  # type: ignore[no-redef]

Event = dict[str, Any]
OnEvent = Callable[[Event], None]

GAUGES = {
    "vllm:num_requests_waiting": "requests_waiting",
    "vllm:num_requests_running": "requests_running",
    "vllm:kv_cache_usage_perc": "kv_cache_usage",
    "vllm:gpu_cache_usage_perc": "kv_cache_usage",  # the name before vLLM 0.10
}
COUNTERS = {
    "vllm:generation_tokens_total": "generation_tokens",
    "vllm:prompt_tokens_total": "prompt_tokens",
}


async def one_request(session: aiohttp.ClientSession, target: dict, body: dict, api: apis.Api) -> dict[str, Any]:
    reader = api.reader()
    record: dict[str, Any] = {"target": target["name"], "ttft": None, "itl": [], "e2e": None,
                              "prompt_tokens": None, "completion_tokens": None, "error": None}
    started = time.perf_counter()
    record["start"] = started
    last = None
    try:
        async with session.post(target["url"], json=body, headers=target.get("headers") or {}) as response:
            if response.status != 200:
                text = (await response.text())[:300]
                record["error"] = f"HTTP {response.status}: {_error_message(text)}"
                return record
            if not api.streamed:
                reader.read_whole(json.loads(await response.read()))
                last = time.perf_counter()
            else:
                async for raw in response.content:
                    line = raw.strip()
                    if not line.startswith(b"data:"):
                        continue  # blank separators, "event:" lines (the data names its type), ": keep-alive"
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        break
                    now = time.perf_counter()
                    seen = reader.read(json.loads(data))
                    if seen == apis.TOKEN:
                        if last is None:
                            record["ttft"] = now - started
                        else:
                            record["itl"].append(now - last)
                        last = now
                    elif seen == apis.DONE:
                        break
    except apis.AnswerError as exc:
        record["error"] = str(exc)
    except asyncio.TimeoutError:
        record["error"] = "timeout"
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        record["error"] = f"{type(exc).__name__}: {str(exc)[:160]}"
    record["prompt_tokens"], record["completion_tokens"] = reader.input_tokens, reader.output_tokens
    if record["error"] is None:
        if last is None:
            record["error"] = "no token in the stream"
        elif record["completion_tokens"] is None or (not api.streamed and record["prompt_tokens"] is None):
            record["error"] = "no usage in the stream" if api.streamed else "no usage in the answer"
    if last is not None:
        record["e2e"] = last - started
    return record


def _error_message(text: str) -> str:
    try:
        return apis.error_message(json.loads(text))
    except ValueError:
        return text[:160]


# -- engine metrics -----------------------------------------------------------------------------

def parse_metrics(text: str) -> dict[str, float]:
    """The vLLM series we care about, summed over label sets (several engines, models)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        name_end = min((i for i in (line.find("{"), line.find(" ")) if i >= 0), default=-1)
        if name_end < 0:
            continue
        name = line[:name_end]
        key = GAUGES.get(name) or COUNTERS.get(name)
        if key is None:
            continue
        try:
            value = float(line.rsplit(" ", 1)[1])
        except ValueError:
            continue
        out[key] = out.get(key, 0.0) + value
    return out


async def scrape(session: aiohttp.ClientSession, url: str | None) -> dict[str, float] | None:
    if not url:
        return None
    try:
        async with session.get(url.rstrip("/") + "/metrics", timeout=aiohttp.ClientTimeout(total=5)) as response:
            if response.status != 200:
                return None
            return parse_metrics(await response.text())
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
        return None


async def _poll(session: aiohttp.ClientSession, url: str, interval_s: float, samples: list[dict]) -> None:
    while True:
        sample = await scrape(session, url)
        if sample is not None:
            samples.append(sample)
        await asyncio.sleep(interval_s)


# -- one level --------------------------------------------------------------------------------

async def run_level(plan: dict[str, Any], on_event: OnEvent | None = None) -> dict[str, Any]:
    emit = on_event or (lambda event: None)
    targets, bodies, api = plan["targets"], plan["bodies"], apis.APIS[plan["api"]]
    total = plan.get("requests")
    grand_total = total * len(targets) if total is not None else None
    duration_s = plan.get("duration_s")
    rng = random.Random(plan.get("seed", 0))
    offset = int(plan.get("offset", 0))
    timeout = aiohttp.ClientTimeout(total=plan.get("timeout_s") or None, sock_connect=10)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    records: list[dict[str, Any]] = []
    warm: list[dict[str, Any]] = []
    counter = {"next": 0, "done": 0, "failed": 0}

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        warmup = int(plan.get("warmup") or 0)
        if warmup:
            emit({"event": "phase", "phase": "warmup"})
            width = max(1, min(warmup, int(plan.get("concurrency") or 4)))
            for target in targets:
                queue = list(range(warmup))

                async def warm_worker(target: dict = target, queue: list = queue) -> None:
                    while queue:
                        index = queue.pop() + warmup * targets.index(target)
                        warm.append(await one_request(session, target, bodies[(offset + index) % len(bodies)], api))

                await asyncio.gather(*(warm_worker() for _ in range(width)))
        metrics_url = plan.get("metrics_url")
        before = await scrape(session, metrics_url)
        samples: list[dict] = []
        poller = (asyncio.create_task(_poll(session, metrics_url, float(plan.get("metrics_interval_s") or 1.0), samples))
                  if metrics_url and before is not None else None)
        emit({"event": "phase", "phase": "measure"})
        started = time.perf_counter()
        deadline = started + duration_s if duration_s else None

        # --requests counts per target: with several targets each gets exactly that many.
        quota = {t["name"]: total for t in targets} if total is not None else None

        def pick(preferred: int) -> dict | None:
            """The preferred target, else the next one with requests left; None when all are done."""
            if deadline is not None and time.perf_counter() >= deadline:
                return None
            for step in range(len(targets)):
                target = targets[(preferred + step) % len(targets)]
                if quota is None:
                    return target
                if quota[target["name"]] > 0:
                    quota[target["name"]] -= 1
                    return target
            return None

        async def send(target: dict) -> None:
            index = counter["next"]
            counter["next"] += 1
            body = bodies[(offset + warmup * len(targets) + index) % len(bodies)]
            record = await one_request(session, target, body, api)
            record["start"] -= started
            records.append(record)
            counter["done"] += 1
            counter["failed"] += record["error"] is not None
            emit({"event": "progress", "done": counter["done"], "failed": counter["failed"], "total": grand_total,
                  "elapsed_s": time.perf_counter() - started})

        if plan.get("rate"):
            rate = float(plan["rate"])
            tasks = []
            next_at = started
            arrival = 0
            while (target := pick(arrival)) is not None:
                tasks.append(asyncio.create_task(send(target)))
                arrival += 1
                next_at += rng.expovariate(rate)
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            await asyncio.gather(*tasks)
        else:
            async def worker(number: int) -> None:
                turn = number  # each worker alternates the targets, request by request
                while (target := pick(turn)) is not None:
                    await send(target)
                    turn += 1

            await asyncio.gather(*(worker(n) for n in range(int(plan["concurrency"]))))
        ended = time.perf_counter()
        if poller is not None:
            poller.cancel()
        after = await scrape(session, metrics_url)
    return {
        "records": records,
        "duration_s": ended - started,
        "warmup_output_tokens": sum(r["completion_tokens"] or 0 for r in warm),
        "warmup_failed": sum(r["error"] is not None for r in warm),
        "engine": {"before": before, "after": after, "samples": samples} if before is not None else None,
    }


def main(argv: list[str]) -> int:
    """On a node: ``loadgen.py PLAN.json RESULT.json``; progress lines on stdout, at most 5 a second."""
    plan = json.loads(open(argv[1]).read())
    shown = [0.0]

    def emit(event: Event) -> None:
        now = time.monotonic()
        if event.get("event") != "progress" or now - shown[0] >= 0.2 or event.get("done") == event.get("total"):
            shown[0] = now
            sys.stdout.write(json.dumps(event) + "\n")
            sys.stdout.flush()

    result = asyncio.run(run_level(plan, emit))
    with open(argv[2] + ".tmp", "w") as handle:
        json.dump(result, handle)
    import os

    os.replace(argv[2] + ".tmp", argv[2])
    sys.stdout.write(json.dumps({"event": "done"}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
