"""One usage row per request, appended to the spool off the database's path."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ..store import SpoolWriter


@dataclass
class UsageRow:
    request_id: str
    gateway_id: str
    model: str
    started_at: datetime
    finished_at: datetime
    http_status: int
    key_id: str | None = None
    tier: str | None = None
    node: str | None = None
    ttft_ms: float | None = None
    wake_wait_ms: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    client_aborted: bool = False
    streamed: bool = False
    error: str | None = None


class UsageRecorder:
    def __init__(self, writer: SpoolWriter) -> None:
        self.writer = writer
        self.gateway_id = writer.writer_id

    def record(self, row: UsageRow) -> None:
        # One write(2) to the spool: when it returns, the row survives a kill -9. vars(), not
        # asdict(): the fields are flat, and asdict's deep copy showed in the relay's profile.
        self.writer.append(vars(row))
