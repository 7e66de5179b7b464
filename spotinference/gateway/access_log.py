"""The access log: one line per request, from the usage row the relay builds once the response
has finished (so it adds no work before or during the answer).

A line names the key by its name (never the key, nor its hash), and carries the model, tier,
status, prompt and completion tokens, time to first token, the wait for a wake, and the duration.
The line goes to the ``spotinference.access`` logger, whose handler (``logs.configure``) only
enqueues it: formatting and the write to stderr happen in the log's own thread.

Measured on this 2-core machine, shared with other work (load average 7-9), so the end-to-end
figures are mostly noise: ``python -m tests.benchmarks.gateway_overhead --levels 1 --rounds 300
--log-level L`` (sim engine, 32 tokens, one stream), added time to first token at p50 / p95,
two runs each, alternated:

    --log-level warning (no access line)   1.00 / 3.94 ms,  0.74 / 2.34 ms
    --log-level info    (an access line)   0.62 / 1.28 ms,  0.79 / 2.11 ms

In process, the line's cost on the event loop (``record`` with and without it, 5 x 20,000 calls,
best): ~12 us per request at ``info`` (the fields, the LogRecord, one queue put), ~0.5 us at
``warning`` (one level check): about 2% of the gateway's ~0.5 ms.
"""

from __future__ import annotations

import logging

from ..store import Store
from .logs import fields
from .usage import UsageRecorder, UsageRow

access = logging.getLogger("spotinference.access")


class KeyNames:
    """key_id → key name, reloaded (off the event loop) when the keys change."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.names: dict[str, str] = {}

    def load(self) -> None:
        with self.store.reading() as con:
            self.names = dict(con.execute("SELECT key_id, name FROM api_keys").fetchall())


class AccessLoggingRecorder(UsageRecorder):
    """Spools the usage row as before, then logs it as the request's access line."""

    def __init__(self, recorder: UsageRecorder, names: KeyNames) -> None:
        self.writer = recorder.writer
        self.gateway_id = recorder.gateway_id
        self.key_names = names

    def record(self, row: UsageRow) -> None:
        super().record(row)  # the row first: it is what must survive
        if access.isEnabledFor(logging.INFO):
            # makeRecord + handle is access.info() without its walk up the stack for the caller's
            # file and line (findCaller), which nobody reads here: a third of the line's cost.
            extra = access_fields(row, self.key_names.names.get(row.key_id or ""))
            access.handle(access.makeRecord(access.name, logging.INFO, __file__, 0, "request", None, None, extra=extra))


def access_fields(row: UsageRow, key_name: str | None) -> dict:
    """The access line's fields for ``row`` (``extra=`` of the log call)."""
    return fields(
        event="request", key=key_name, model=row.model, endpoint=row.endpoint, tier=row.tier, status=row.http_status,
        prompt_tokens=row.prompt_tokens, completion_tokens=row.completion_tokens,
        ttft_ms=None if row.ttft_ms is None else round(row.ttft_ms, 1),
        wake_wait_ms=None if row.wake_wait_ms is None else round(row.wake_wait_ms, 1),
        duration_ms=round((row.finished_at - row.started_at).total_seconds() * 1000, 1),
        node=row.node, streamed=row.streamed, aborted=row.client_aborted, error=row.error, request_id=row.request_id,
    )
