"""One usage row per request, appended to the spool off the database's path; and finding the
usage in a non-streamed answer without holding or parsing the whole answer.

Token counts are ``None`` when they are unknown: the request reached the engine, which did work
(a prefill at least) that no usage object described, e.g. a stream aborted before its first
chunk, or a non-streamed request whose client left (vLLM sends usage only with the whole answer).
``None`` is stored as NULL, never as 0, so that unknown does not read as free.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from ..store import SpoolWriter


@dataclass
class UsageRow:
    request_id: str
    gateway_id: str
    model: str
    endpoint: str | None  # the route, e.g. /v1/chat/completions or /v1/responses/{id}
    started_at: datetime
    finished_at: datetime
    http_status: int
    key_id: str | None = None
    tier: str | None = None
    node: str | None = None
    ttft_ms: float | None = None
    wake_wait_ms: float | None = None
    prompt_tokens: int | None = 0  # None: unknown (stored as NULL)
    completion_tokens: int | None = 0
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


_KEY = b'"usage":'
_FINISH = b'"finish_reason":"'
_BRACES = re.compile(rb"[{}]")
MAX_USAGE_BYTES = 4096  # vLLM's usage object is ~150 bytes; details included, well under this


class BodyUsage:
    """The last ``"usage":{...}`` object and the first ``finish_reason`` of a JSON body that
    passes in pieces, holding a few KB at most.

    vLLM writes usage near the end of a non-streamed answer, after the choices (which can be
    megabytes), followed by a few more keys. Each piece is searched with ``bytes.find`` (C), not
    decoded: a 60 MB answer costs a scan, not a 60 MB parse and its Python objects on the event
    loop. Inside a JSON string every ``"`` is escaped, so the key's exact bytes only match a key.
    The last match wins: vLLM's top-level usage comes after anything nested in the choices.
    """

    __slots__ = ("usage", "finish_reason", "oversized", "_tail", "_capture", "_depth", "_finish_tail")

    def __init__(self) -> None:
        self.usage: bytes | None = None
        self.finish_reason: str | None = None
        self.oversized = False  # a usage object past MAX_USAGE_BYTES: not vLLM's
        self._tail = b""  # the end of the last piece, for a key split across pieces
        self._capture: bytearray | None = None  # the usage object being read
        self._depth = 0
        self._finish_tail = b""

    def feed(self, piece: bytes) -> None:
        if self.finish_reason is None:
            self._find_finish(piece)
        data = self._tail + piece if self._tail else piece
        at = 0
        while True:
            if self._capture is not None:
                at = self._take(data, at)
                if self._capture is not None:
                    self._tail = b""
                    return  # the object goes on in the next piece
            found = data.find(_KEY, at)
            if found < 0:
                break
            at = found + len(_KEY)
            self._capture = bytearray()
            self._depth = 0
        self._tail = data[-(len(_KEY) - 1):]

    def _take(self, data: bytes, at: int) -> int:
        """Read the usage object from ``at``; return where it ended (its capture is then done)."""
        capture = self._capture
        assert capture is not None
        if not capture:
            while at < len(data) and data[at] in b" \t\r\n":
                at += 1
            if at == len(data):
                return at
            if data[at] != 0x7B:  # "{": usage is null (or not an object): nothing to take
                self._capture = None
                return at
        for match in _BRACES.finditer(data, at, min(len(data), at + MAX_USAGE_BYTES + 1 - len(capture))):
            self._depth += 1 if match[0] == b"{" else -1
            if self._depth == 0:
                end = match.end()
                capture += data[at:end]
                self.usage = bytes(capture)
                self._capture = None
                return end
        capture += data[at:]
        if len(capture) > MAX_USAGE_BYTES:
            self.oversized = True
            self._capture = None
        return len(data)

    def _find_finish(self, piece: bytes) -> None:
        data = self._finish_tail + piece
        found = data.find(_FINISH)
        if found < 0:
            self._finish_tail = data[-(len(_FINISH) + 40):]
            return
        start = found + len(_FINISH)
        end = data.find(b'"', start, start + 40)
        if end < 0:
            self._finish_tail = data[found:] if len(data) - found < len(_FINISH) + 40 else b""
            if not self._finish_tail:
                self.finish_reason = ""
            return
        self.finish_reason = data[start:end].decode("utf-8", "replace")
        self._finish_tail = b""
