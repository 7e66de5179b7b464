"""Admission: which requests run and which wait, as vLLM's scheduler reports them.

At most ``max_num_seqs`` sequences run at once (a request with ``n`` choices is ``n``
sequences, like vLLM's child requests); the rest wait in arrival order. The counts feed the
``vllm:num_requests_running`` and ``vllm:num_requests_waiting`` gauges and the concurrency
slowdown of the timing model.
"""

from __future__ import annotations

import asyncio
from collections import deque

from ..errors import InputError


class Scheduler:
    def __init__(self, max_num_seqs: int, kv_cache_tokens: int) -> None:
        if max_num_seqs < 1:
            raise InputError(f"max_num_seqs must be 1 or more, got {max_num_seqs}")
        if kv_cache_tokens < 1:
            raise InputError(f"kv_cache_tokens must be 1 or more, got {kv_cache_tokens}")
        self.max_num_seqs = max_num_seqs
        self.kv_cache_tokens = kv_cache_tokens
        self.running = 0
        self.waiting = 0
        self.cached_tokens = 0  # prompt and generated tokens of running sequences
        self._queue: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def kv_cache_usage(self) -> float:
        return min(self.cached_tokens / self.kv_cache_tokens, 1.0)

    async def admit(self, seqs: int) -> None:
        """Wait for room for ``seqs`` sequences; a request bigger than the batch runs alone."""
        if not self._queue and self._fits(seqs):
            self.running += seqs
            return
        admitted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (seqs, admitted)
        self._queue.append(entry)
        self.waiting += seqs
        try:
            await admitted
        except asyncio.CancelledError:
            if admitted.done() and not admitted.cancelled():
                self.release(seqs)  # admitted in the same instant the client left
            else:
                self._queue.remove(entry)
                self.waiting -= seqs
                self._wake()  # a smaller request behind this one may fit now
            raise

    def release(self, seqs: int) -> None:
        self.running -= seqs
        self._wake()

    def _fits(self, seqs: int) -> bool:
        return self.running + seqs <= self.max_num_seqs or self.running == 0

    def _wake(self) -> None:
        while self._queue and self._fits(self._queue[0][0]):
            seqs, admitted = self._queue.popleft()
            self.waiting -= seqs
            self.running += seqs
            admitted.set_result(None)
