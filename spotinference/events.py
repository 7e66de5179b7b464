"""The fleet's decisions with their reasons, as `spot events` shows them.

One list from four tables (``queries/events.sql``): the fleet's node transitions and decisions
(``fleet_events``: wakes and what triggered them, how long they took, idle hibernations,
failovers), the budget gate's openings and closings (``gate_events``), billing anomalies
(``billing_anomalies``) and failed sampler runs (``sample_runs``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .reports import run_query
from .store import Store

BEGINNING = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Event:
    event_at: datetime
    source: str  # fleet | gate | billing | sampler
    kind: str
    tier: str | None
    node: str | None
    message: str
    detail: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {"event_at": self.event_at, "source": self.source, "kind": self.kind, "tier": self.tier,
                "node": self.node, "message": self.message, "detail": self.detail}


def read_events(store: Store, *, since: datetime | None = None, tier: str | None = None, last: int = 50) -> list[Event]:
    """The newest ``last`` events at or after ``since`` (of ``tier`` only, if given), oldest first."""
    rows = run_query(store, "events", since=since or BEGINNING, tier=tier, last=last).rows
    return [Event(at, source, kind, tier_, node, message, json.loads(detail) if detail else None)
            for at, source, kind, tier_, node, message, detail in rows]


@dataclass
class EventFollower:
    """New events, poll after poll (``spot events --follow``): each event is returned once."""

    store: Store
    since: datetime
    tier: str | None = None
    _seen_at_since: set[tuple[str, str, str]] = field(default_factory=set)

    def poll(self, last: int = 1000) -> list[Event]:
        # Events at exactly ``since`` may have been returned already: the query is inclusive.
        found = [e for e in read_events(self.store, since=self.since, tier=self.tier, last=last)
                 if (e.event_at > self.since or _key(e) not in self._seen_at_since)]
        if found:
            newest = max(e.event_at for e in found)
            if newest > self.since:
                self.since, self._seen_at_since = newest, set()
            self._seen_at_since |= {_key(e) for e in found if e.event_at == self.since}
        return found

    def seen(self, events: list[Event]) -> None:
        """Count ``events`` (already shown) as returned."""
        if events:
            self.since = max(self.since, max(e.event_at for e in events))
            self._seen_at_since |= {_key(e) for e in events if e.event_at == self.since}


def _key(event: Event) -> tuple[str, str, str]:
    return event.source, event.message, json.dumps(event.detail, sort_keys=True)
