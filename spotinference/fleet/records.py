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

#: states in which no engine of ours runs on the node (its VM is not running, or is a new one)
_ENGINE_STOPPED = frozenset({
    NodeState.PROVISIONING, NodeState.HIBERNATING, NodeState.HIBERNATED, NodeState.WAKING,
    NodeState.STOPPED, NodeState.FAILED, NodeState.TERMINATED,
})


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
        engine_started: bool = False,
    ) -> NodeState | None:
        """Save the node's state; a change of state is also an event. Returns the previous state.

        "Up since" is when the engine last started: it is cleared when the engine is known to have
        stopped (the VM left RUNNING, another VM took the name) or was just (re)started
        (``engine_started``), and set at the next SERVING. A serving node seen serving again, or
        briefly unhealthy (bootstrapping) and back, keeps it."""
        now = self.clock()
        vm_id = vm.provider_id if vm else None
        with self.store.transaction() as con:
            row = con.execute("SELECT state, up_since, provider_id FROM nodes WHERE name = ?", [name]).fetchone()
            previous = NodeState(row[0]) if row else None
            up_since = row[1] if row else None
            another_vm = row is not None and row[2] is not None and vm_id is not None and row[2] != vm_id
            if engine_started or another_vm or state in _ENGINE_STOPPED:
                up_since = None
            if state is NodeState.SERVING and up_since is None:
                up_since = now
            # Delete then insert in this transaction, not INSERT OR REPLACE: a DuckLake store
            # holds no primary key to replace by.
            con.execute("DELETE FROM nodes WHERE name = ?", [name])
            con.execute(
                "INSERT INTO nodes (name, tier, provider, provider_id, state, ip, engine_url, flavor,"
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
            # Recorded once: checked rather than left to the key (a DuckLake store holds no keys).
            con.execute(
                "INSERT INTO fleet_resources SELECT $provider, $type, $id, $name, $tier, $at, 'created' "
                "WHERE NOT EXISTS (SELECT 1 FROM fleet_resources "
                "WHERE provider = $provider AND resource_type = $type AND resource_id = $id)",
                {"provider": provider, "type": resource_type, "id": str(resource_id), "name": name,
                 "tier": tier, "at": self.clock()},
            )

    def decision(self, *, tier: str, reason: str, node: str | None = None, detail: dict[str, Any] | None = None) -> None:
        """An event that is not a state change: a wake requested, an idle tier hibernated, ..."""
        with self.store.writing() as con:
            con.execute(
                "INSERT INTO fleet_events VALUES (?, ?, ?, NULL, NULL, NULL, ?, ?)",
                [self.clock(), tier, node, reason, json.dumps(detail) if detail else None],
            )

    def tier_change(self, *, tier: str, kind: str, reason: str, detail: dict[str, Any]) -> bool:
        """Record a tier's ``failover`` or ``recovered`` once; True if this call recorded it.

        Every gateway worker, on every host, meets the same failure and fails the tier over for
        its own held requests; the fleet changed once. So a change is skipped when it is already
        the tier's last one: a failover while the last change was a failover and no node of the
        tier has served since (a gateway stopped mid-outage records no recovery), a recovery
        while the last change was a recovery. The caller holds the tier's lock (fleet.locks),
        which makes the look and the insert one step across processes and hosts."""
        with self.store.writing() as con:
            last = con.execute(
                "SELECT event_at, json_extract_string(detail, '$.kind') FROM fleet_events WHERE tier = ?"
                " AND json_extract_string(detail, '$.kind') IN ('failover', 'recovered')"
                " ORDER BY event_at DESC LIMIT 1", [tier]).fetchone()
            if last is not None and last[1] == kind:
                served_since = kind == "failover" and con.execute(
                    "SELECT count(*) FROM fleet_events WHERE tier = ? AND to_state = 'serving' AND event_at > ?",
                    [tier, last[0]]).fetchone()[0] > 0
                if not served_since:
                    return False
            con.execute("INSERT INTO fleet_events VALUES (?, ?, NULL, NULL, NULL, NULL, ?, ?)",
                        [self.clock(), tier, reason, json.dumps({**detail, "kind": kind})])
        return True

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

    def last_requests(self) -> dict[tuple[str, str], datetime]:
        """The newest finished request per VM, keyed by (node name, provider id): a VM's requests
        are those on its node name since the fleet first recorded that VM, so a new VM that
        reuses a name starts without the old one's."""
        with self.store.reading() as con:
            rows = con.execute(
                "WITH vms AS (SELECT node, provider_id, min(event_at) AS first_seen FROM fleet_events"
                "  WHERE node IS NOT NULL AND provider_id IS NOT NULL GROUP BY node, provider_id)"
                " SELECT vms.node, vms.provider_id, max(r.finished_at) FROM vms"
                " JOIN requests r ON r.node = vms.node AND r.finished_at >= vms.first_seen"
                " GROUP BY vms.node, vms.provider_id"
            ).fetchall()
        return {(node, provider_id): at for node, provider_id, at in rows}
