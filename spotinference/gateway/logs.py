"""The gateway's log on stderr: the fleet's decisions as they happen, and one access line per request.

Each worker process sends its ``spotinference`` loggers' records through a ``QueueHandler`` to a
``QueueListener`` thread that formats and writes them, so that a request never waits on stderr
(a slow terminal or a full pipe blocks that thread, not the event loop). The handler enqueues
the record as it is, unformatted: formatting happens in the listener's thread too. The queue is
bounded (``MAX_QUEUED``): while stderr stays blocked, lines past it are dropped and counted
(``dropped``), never waited for, and the count is logged once the writer catches up.

Lines carry structured fields (``extra=fields(event=..., tier=...)``): the text format appends
them as ``key=value``, the JSON format (one object per line) as keys.

    text: 2026-12-05T18:40:01.123Z INFO wake started: tier demo (request held) event=wake_started tier=demo
    json: {"at": "2026-12-05T18:40:01.123Z", "level": "info", "logger": "spotinference.gateway.tiers",
           "message": "wake started: tier demo (request held)", "event": "wake_started", "tier": "demo"}
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
ROOT = "spotinference"
MAX_QUEUED = 10_000


def fields(**values: Any) -> dict[str, Any]:
    """``extra=`` for a log call: structured fields the formatters show beside the message."""
    return {"fields": values}


def _timestamp(record: logging.LogRecord) -> str:
    at = datetime.fromtimestamp(record.created, UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname} {record.getMessage()}"
        extra = getattr(record, "fields", None)
        if extra:
            line += " " + " ".join(f"{k}={_text(v)}" for k, v in extra.items())
        trace = _trace(self, record)
        return f"{line}\n{trace}" if trace else line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {"at": _timestamp(record), "level": record.levelname.lower(),
                                "logger": record.name, "message": record.getMessage()}
        data.update(getattr(record, "fields", None) or {})
        trace = _trace(self, record)
        if trace:
            data["exception"] = trace
        return json.dumps(data, default=str)


def _trace(formatter: logging.Formatter, record: logging.LogRecord) -> str | None:
    if record.exc_info:
        return formatter.formatException(record.exc_info)
    return record.exc_text


def _text(value: Any) -> str:
    if value is None:
        return "-"
    text = str(value)
    return json.dumps(text) if (" " in text or "=" in text or not text) else text


class _EnqueueAsIs(logging.handlers.QueueHandler):
    dropped = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:  # stderr has been blocked for MAX_QUEUED lines: drop, never block
            _EnqueueAsIs.dropped += 1
            return
        if _EnqueueAsIs.dropped and self.queue.qsize() < MAX_QUEUED // 2:
            lost, _EnqueueAsIs.dropped = _EnqueueAsIs.dropped, 0
            note = logging.LogRecord(ROOT, logging.WARNING, __file__, 0, "log lines dropped while stderr was blocked",
                                     None, None)
            note.fields = {"event": "log_dropped", "lines": lost}  # type: ignore[attr-defined]
            try:
                self.queue.put_nowait(note)
            except queue.Full:
                _EnqueueAsIs.dropped += lost

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # The records' fields are plain values fixed at the call: nothing to copy or format here,
        # on the caller's thread (the event loop); an exception's traceback is formatted now,
        # while it still exists.
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record


_listener: logging.handlers.QueueListener | None = None


def configure(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send the ``spotinference`` loggers to ``stream`` (stderr) at ``level``, in ``fmt``, through a
    queue and a writer thread. Called once in each gateway worker; calling again replaces it."""
    global _listener
    if level not in LEVELS or fmt not in FORMATS:
        raise ValueError(f"log level {level!r} / format {fmt!r}: expected one of {LEVELS} / {FORMATS}")
    stop()
    writer = logging.StreamHandler(stream or sys.stderr)
    writer.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    records: queue.Queue[logging.LogRecord] = queue.Queue(MAX_QUEUED)
    _listener = logging.handlers.QueueListener(records, writer)
    _listener.start()
    logger = logging.getLogger(ROOT)
    for handler in [h for h in logger.handlers if isinstance(h, _EnqueueAsIs)]:
        logger.removeHandler(handler)
    logger.addHandler(_EnqueueAsIs(records))
    logger.setLevel(level.upper())
    logger.propagate = False
    atexit.register(stop)


def stop() -> None:
    """Write what is queued and stop the writer thread."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None
