"""The fleet in the store: each node's last known state, and every transition and decision as an
event with its reason (``nodes`` and ``fleet_events``, migration 0005)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..providers import Vm
from ..store import Store
from .states import NodeState

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class NodeRecord:
    name: str
    tier: str
    provider: str
    provider_id: str | None
    state: NodeState
    ip: str | None
    engine_url: str | None
    flavor: str | None
    gpu: str | None
    gpu_count: int | None
    up_since: datetime | None
    updated_at: datetime


@dataclass(frozen=True)
class FleetEvent:
    event_at: datetime
    tier: str
    node: str | None
    provider_id: str | None
    from_state: str | None
    to_state: str | None
    reason: str
    detail: dict[str, Any] | None


class FleetRecords:
    def __init__(self, store: Store, *, clock: Clock = utc_now) -> None:
        self.store = store
        self.clock = clock

    def record(
        self,
        *,
        name: str,
        tier: str,
        provider: str,
        vm: Vm | None,
        state: NodeState,
        reason: str,
        engine_url: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> NodeState | None:
        """Save the node's state; a change of state is also an event. Returns the previous state."""
        now = self.clock()
        with self.store.transaction() as con:
            row = con.execute("SELECT state, up_since FROM nodes WHERE name = ?", [name]).fetchone()
            previous = NodeState(row[0]) if row else None
            up_since = row[1] if row else None
            if state is NodeState.SERVING and previous is not NodeState.SERVING:
                up_since = now
            elif state is not NodeState.SERVING:
                up_since = None
            con.execute(
                "INSERT OR REPLACE INTO nodes (name, tier, provider, provider_id, state, ip, engine_url, flavor,"
                " gpu, gpu_count, up_since, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    name, tier, provider, vm.provider_id if vm else None, state.value,
                    vm.ip if vm else None, engine_url, vm.flavor if vm else None,
                    vm.gpu if vm else None, vm.gpu_count if vm else None, up_since, now,
                ],
            )
            if previous is not state:
                con.execute(
                    "INSERT INTO fleet_events VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [now, tier, name, vm.provider_id if vm else None,
                     previous.value if previous else None, state.value, reason,
                     json.dumps(detail) if detail else None],
                )
        return previous

    def own(self, *, provider: str, resource_type: str, resource_id: str, name: str | None, tier: str) -> None:
        """Record that spot created this resource: from now on its bill is the fleet's."""
        with self.store.writing() as con:
            con.execute(
                "INSERT INTO fleet_resources VALUES (?, ?, ?, ?, ?, ?, 'created') ON CONFLICT DO NOTHING",
                [provider, resource_type, str(resource_id), name, tier, self.clock()],
            )

    def decision(self, *, tier: str, reason: str, node: str | None = None, detail: dict[str, Any] | None = None) -> None:
        """An event that is not a state change: a wake requested, an idle tier hibernated, ..."""
        with self.store.writing() as con:
            con.execute(
                "INSERT INTO fleet_events VALUES (?, ?, ?, NULL, NULL, NULL, ?, ?)",
                [self.clock(), tier, node, reason, json.dumps(detail) if detail else None],
            )

    def nodes(self) -> dict[str, NodeRecord]:
        with self.store.reading() as con:
            rows = con.execute(
                "SELECT name, tier, provider, provider_id, state, ip, engine_url, flavor, gpu, gpu_count,"
                " up_since, updated_at FROM nodes ORDER BY name"
            ).fetchall()
        return {r[0]: NodeRecord(*r[:4], NodeState(r[4]), *r[5:]) for r in rows}

    def events(self, *, tier: str | None = None, node: str | None = None, limit: int = 100) -> list[FleetEvent]:
        with self.store.reading() as con:
            rows = con.execute(
                "SELECT event_at, tier, node, provider_id, from_state, to_state, reason, detail FROM fleet_events"
                " WHERE (? IS NULL OR tier = ?) AND (? IS NULL OR node = ?) ORDER BY event_at DESC LIMIT ?",
                [tier, tier, node, node, limit],
            ).fetchall()
        return [FleetEvent(*r[:7], json.loads(r[7]) if r[7] else None) for r in rows]

    def last_requests(self) -> dict[str, datetime]:
        """The newest finished request per node, from the token log."""
        with self.store.reading() as con:
            rows = con.execute(
                "SELECT node, max(finished_at) FROM requests WHERE node IS NOT NULL GROUP BY node"
            ).fetchall()
        return {node: at for node, at in rows}
