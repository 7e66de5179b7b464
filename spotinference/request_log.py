"""The token log as an operator reads it: the newest requests matching some filters, and those that finish next."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from .reports import run_query
from .store import Store

# A row reaches the database when its gateway worker's spool is flushed, so a row that finished a
# little earlier can arrive after one already seen: following looks this far back and skips ids seen.
LOOKBACK_S = 120.0


@dataclass(frozen=True)
class RequestFilter:
    """Each field None for "any"; the fields combine (AND)."""

    key_name: str | None = None
    model: str | None = None
    status_min: int | None = None
    status_max: int | None = None
    since: datetime | None = None  # started at or after

    @property
    def narrows(self) -> bool:
        return any(v is not None for v in asdict(self).values())


def newest_requests(store: Store, filters: RequestFilter, last: int) -> list[dict[str, Any]]:
    """The ``last`` newest matching requests, newest first (queries/requests_matching.sql)."""
    return run_query(store, "requests_matching", last=last, after=None, **asdict(filters)).records()


def follow_requests(store: Store, filters: RequestFilter, last: int, *, poll_s: float = 1.0,
                    sleep: Callable[[float], None] = time.sleep) -> Iterator[dict[str, Any]]:
    """The ``last`` newest matching requests oldest first, then each one that finishes after, forever.

    A row is yielded once; one that finished before the start (even if it reaches the database
    later) is never yielded unless it was among the ``last`` newest.
    """
    started = datetime.now(UTC)
    seen = {r["id"]: r["finished_at"] for r in _finished_after(store, filters, started - timedelta(seconds=LOOKBACK_S))}
    newest = started
    for row in reversed(newest_requests(store, filters, last)):
        seen[row["id"]] = row["finished_at"]
        yield row
    while True:
        sleep(poll_s)
        for row in _finished_after(store, filters, newest - timedelta(seconds=LOOKBACK_S)):
            if row["id"] in seen:
                continue
            seen[row["id"]] = row["finished_at"]
            newest = max(newest, row["finished_at"])
            yield row
        horizon = newest - timedelta(seconds=LOOKBACK_S)
        seen = {i: t for i, t in seen.items() if t > horizon}


def _finished_after(store: Store, filters: RequestFilter, after: datetime) -> list[dict[str, Any]]:
    """Every matching request that finished after ``after``, in the order they finished."""
    rows = run_query(store, "requests_matching", last=_EVERY_ROW, after=after, **asdict(filters)).records()
    return sorted(rows, key=lambda r: (r["finished_at"], r["started_at"], r["id"]))


_EVERY_ROW = 2**62  # LIMIT wants a number; the lookback window bounds what a poll reads
