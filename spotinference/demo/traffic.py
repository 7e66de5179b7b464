"""The demo's traffic, through the official `openai` SDK as any client would send it."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

PROMPTS = (
    "Explain in one paragraph why idle GPUs should hibernate.",
    "Write a haiku about spot instances.",
    "List three things a cost per million tokens depends on.",
    "Say hello in five languages.",
)


@dataclass(frozen=True)
class Reply:
    streamed: bool
    ok: bool
    sent_at: float  # monotonic
    ttft_s: float | None  # streams: first content chunk; otherwise the whole reply
    latency_s: float
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None


@dataclass(frozen=True)
class BurstStats:
    requests: int
    ok: int
    streamed: int
    concurrency: int
    wall_s: float
    prompt_tokens: int
    completion_tokens: int
    output_tokens_per_s: float
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    latency_p50_ms: float
    latency_p95_ms: float
    errors: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _percentile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


async def one_request(client: Any, model: str, i: int, *, stream: bool, max_tokens: int) -> Reply:
    import openai

    messages = [{"role": "user", "content": f"{PROMPTS[i % len(PROMPTS)]} (request {i})"}]
    sent = time.monotonic()
    first: float | None = None
    try:
        if stream:
            response = await client.chat.completions.create(
                model=model, messages=messages, max_tokens=max_tokens, stream=True,
                stream_options={"include_usage": True})
            usage = None
            async for chunk in response:
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.monotonic()
                if chunk.usage:
                    usage = chunk.usage
            done = time.monotonic()
        else:
            reply = await client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens)
            usage = reply.usage
            done = first = time.monotonic()
    except openai.OpenAIError as exc:
        return Reply(stream, False, sent, None, time.monotonic() - sent, 0, 0, f"{type(exc).__name__}: {exc}")
    return Reply(stream, True, sent, None if first is None else first - sent, done - sent,
                 usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0)


async def burst(base_url: str, key: str, model: str, *, requests: int, concurrency: int,
                max_tokens: int) -> BurstStats:
    """``requests`` chat completions, every other one streamed, ``concurrency`` at a time."""
    import openai

    limit = asyncio.Semaphore(concurrency)
    async with openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=120) as client:
        async def limited(i: int) -> Reply:
            async with limit:
                return await one_request(client, model, i, stream=bool(i % 2), max_tokens=max_tokens)

        began = time.monotonic()
        replies = await asyncio.gather(*(limited(i) for i in range(requests)))
        wall = time.monotonic() - began
    good = [r for r in replies if r.ok]
    ttfts = [r.ttft_s for r in good if r.streamed and r.ttft_s is not None]
    latencies = [r.latency_s for r in good] or [0.0]
    completion = sum(r.completion_tokens for r in good)
    return BurstStats(
        requests=len(replies), ok=len(good), streamed=sum(r.streamed for r in replies), concurrency=concurrency,
        wall_s=round(wall, 3), prompt_tokens=sum(r.prompt_tokens for r in good), completion_tokens=completion,
        output_tokens_per_s=round(completion / wall, 1) if wall > 0 else 0.0,
        ttft_p50_ms=round(_percentile(ttfts, 50) * 1000, 1) if ttfts else None,
        ttft_p95_ms=round(_percentile(ttfts, 95) * 1000, 1) if ttfts else None,
        latency_p50_ms=round(_percentile(latencies, 50) * 1000, 1),
        latency_p95_ms=round(_percentile(latencies, 95) * 1000, 1),
        errors=[r.error for r in replies if r.error][:5],
    )
