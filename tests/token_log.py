"""Reading the gateway's token log in tests, once its flusher has copied the spooled rows in."""

from __future__ import annotations

import time
from pathlib import Path

from spotinference.store import Store


def logged_rows(home: Path, request_ids: set[str] | None = None, *, expect: int = 1,
                timeout_s: float = 15.0) -> list[dict]:
    """The ``requests`` rows (oldest first, only ``request_ids`` if given) once there are at least
    ``expect`` of them; whatever there is after ``timeout_s`` (a segment is sealed every second)."""
    store = Store(home)
    deadline = time.monotonic() + timeout_s
    while True:
        store.flush()
        with store.reading() as con:
            cursor = con.execute("SELECT * FROM requests ORDER BY started_at")
            columns = [d[0] for d in cursor.description]
            rows = [dict(zip(columns, r, strict=True)) for r in cursor.fetchall()]
        if request_ids is not None:
            rows = [r for r in rows if r["request_id"] in request_ids]
        if len(rows) >= expect or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)
