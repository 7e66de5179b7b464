"""The timing model: how long the simulated engine takes to load, prefill and decode.

Shaped like a GPU engine under continuous batching, reduced to a few knobs:

    load_seconds                         start-up, before the port opens (vLLM loads weights first)
    ttft_ms + prefill_ms_per_token * P   time to first token for a prompt of P tokens
    itl_ms                               time between later tokens
    × (1 + slowdown_per_request * (R - 1))   when R requests are running at once

The clock and the sleep are injected so tests can run the model without waiting for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..errors import InputError

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class TimingModel:
    ttft_ms: float = 20.0
    itl_ms: float = 5.0
    prefill_ms_per_token: float = 0.0
    # 0.05 = each extra running request makes every step 5 % slower (batching is not free).
    slowdown_per_request: float = 0.0
    load_seconds: float = 0.0

    def __post_init__(self) -> None:
        for name in ("ttft_ms", "itl_ms", "prefill_ms_per_token", "slowdown_per_request", "load_seconds"):
            value = getattr(self, name)
            if not value >= 0:  # also rejects NaN
                raise InputError(f"{name} must be zero or more, got {value}")

    def slowdown(self, running: int) -> float:
        return 1.0 + self.slowdown_per_request * max(running - 1, 0)

    def first_token_s(self, prompt_tokens: int, running: int) -> float:
        return (self.ttft_ms + self.prefill_ms_per_token * prompt_tokens) * self.slowdown(running) / 1000.0

    def next_token_s(self, running: int) -> float:
        return self.itl_ms * self.slowdown(running) / 1000.0


@dataclass(frozen=True, slots=True)
class Timebase:
    """Where "now" and "wait" come from: a monotonic clock for durations, the wall clock for
    the ``created`` timestamps clients see."""

    clock: Clock = time.monotonic
    sleep: Sleep = asyncio.sleep
    wall: Clock = time.time

    async def sleep_until(self, deadline_s: float) -> None:
        # Deadlines, not fixed sleeps: a busy loop's lateness must not add up token after token.
        # Always yield, even when late, so one stream that fell behind cannot starve the others.
        await self.sleep(max(deadline_s - self.clock(), 0.0))
