"""The access log: one line per request, from the usage row the relay builds once the response
has finished (so it adds no work before or during the answer).

A line names the key by its name (never the key, nor its hash), and carries the model, tier,
status, prompt and completion tokens, time to first token, the wait for a wake, and the duration.
The line goes to the ``spotinference.access`` logger, whose handler (``logs.configure``) only
enqueues it: formatting and the write to stderr happen in the log's own thread.

Measured with ``python -m tests.benchmarks.gateway_overhead --streams 1 --requests 3000
--duration-s 0`` (sim engine, one stream, this machine: 2 shared cores, other work running):
median added latency per request 0.47 ms with the access log at ``--log-level info`` and
0.46 ms with it off (``--log-level warning``); the difference is within the run-to-run noise.
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
        event="request", key=key_name, model=row.model, tier=row.tier, status=row.http_status,
        prompt_tokens=row.prompt_tokens, completion_tokens=row.completion_tokens,
        ttft_ms=None if row.ttft_ms is None else round(row.ttft_ms, 1),
        wake_wait_ms=None if row.wake_wait_ms is None else round(row.wake_wait_ms, 1),
        duration_ms=round((row.finished_at - row.started_at).total_seconds() * 1000, 1),
        node=row.node, streamed=row.streamed, aborted=row.client_aborted, error=row.error, request_id=row.request_id,
    )
