"""Parse the moments and durations people type: `--since 10m`, `--since 2026-12-01T08:00`."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from spotinference.errors import InputError

SINCE_FORMATS = "a duration back from now (30s, 10m, 2h, 7d) or YYYY-MM-DD[THH:MM[:SS]] (UTC unless an offset is given)"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$", re.IGNORECASE)
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(option: str, text: str, now: datetime | None = None) -> datetime:
    """A relative duration counts back from ``now``; a date or time without an offset is UTC."""
    now = now or datetime.now(UTC)
    match = _DURATION.match(text)
    if match:
        return now - timedelta(seconds=float(match[1]) * _UNIT_S[match[2].lower()])
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"{option} {text!r} is not a time: expected {SINCE_FORMATS}") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
