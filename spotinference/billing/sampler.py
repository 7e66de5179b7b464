"""One `spot sample` run: read each provider's billing usage and record it, all or nothing.

A run reads every sampled provider's per-resource usage (active and deleted resources), then
writes, in one transaction, one ``billing_samples`` row per resource and one ``sample_runs`` row
per provider, even when the provider has no resource at all: "idle fleet, billing healthy, $0"
and "billing unobservable" are different rows, never a missing row. A provider that cannot be
read gets a failed ``sample_runs`` row (``ok = false`` and the one-line error, which never holds
the API key) and none of its resources.

Overlap (cron every minute while a slow run is still retrying): runs take a non-blocking
``flock`` on ``$SPOT_HOME/sample.lock`` for their whole length (on a lake store, the same lock
held in the catalog's PostgreSQL, so crons on several hosts exclude each other). A run that finds it held writes
nothing and returns ``skipped``: the run in progress will record this minute (as ok or failed),
so skipping neither double-writes nor hides a failure; if that run never records anything, the
minute is a coverage gap, as it should be. The kernel (or PostgreSQL) drops the lock of a killed run.

Times are ours, UTC: ``started_at`` before the provider call, ``sampled_at`` when the last
provider's answer arrived (the provider gives no "as of"; one time for every account of the run,
so that they bound a report's window together), ``finished_at`` when the rows are written.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import duckdb

from ..config import Settings
from ..errors import ConfigError, SpotError, StoreError
from ..fleet.naming import parse_node_name
from ..providers.base import BillingItem, Provider
from ..providers.registry import open_provider
from ..store import Store
from ..store.catalog_locks import named_locks
from . import anomalies
from .runs import sampled_providers

log = logging.getLogger("spotinference.billing.sampler")

LOCK_FILE = "sample.lock"
_MICRO = Decimal("0.000001")  # the columns' scale: DECIMAL(18, 6)
_MAX_ERROR_CHARS = 500
_VOLUME_TWIN = re.compile(r"^(?P<base>.+)-(?P<index>[1-9][0-9]{0,2})$")

Clock = Callable[[], datetime]
ProviderFactory = Callable[[Settings, str], Provider]


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ProviderRun:
    """One provider's part of a run: one ``sample_runs`` row."""

    provider: str
    run_id: str
    started_at: datetime
    finished_at: datetime
    ok: bool
    resource_count: int
    sampled_at: datetime | None = None  # None when the provider could not be read
    error: str | None = None
    exit_code: int = 0  # what the CLI exits with for this failure (the error's own code)
    hint: str | None = None
    # The fleet's bill increases in this run (None: no previous ok run to compare with), by the
    # ledger's rules (the same SQL the reports read); and the whole account's.
    spend_usd_since_last: Decimal | None = None
    account_usd_since_last: Decimal | None = None


@dataclass(frozen=True)
class SampleRun:
    """One invocation: a run per sampled provider, or ``skipped`` when another run held the lock."""

    runs: tuple[ProviderRun, ...]
    duration_s: float
    skipped: bool = False
    skipped_because: str | None = None
    errors: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """True when every provider was read and recorded (a skipped run failed at nothing)."""
        return all(run.ok for run in self.runs)

    @property
    def resources(self) -> int:
        return sum(run.resource_count for run in self.runs)

    @property
    def run_id(self) -> str | None:
        return self.runs[0].run_id if len(self.runs) == 1 else (",".join(r.run_id for r in self.runs) or None)

    @property
    def sampled_at(self) -> datetime | None:
        times = [run.sampled_at for run in self.runs if run.sampled_at is not None]
        return min(times) if times else None

    @property
    def spend_usd_since_last(self) -> Decimal | None:
        parts = [run.spend_usd_since_last for run in self.runs]
        if not parts or any(p is None for p in parts):
            return None
        return sum(parts, Decimal(0))  # type: ignore[arg-type]

    @property
    def account_usd_since_last(self) -> Decimal | None:
        parts = [run.account_usd_since_last for run in self.runs]
        if not parts or any(p is None for p in parts):
            return None
        return sum(parts, Decimal(0))  # type: ignore[arg-type]

    @property
    def error(self) -> str | None:
        failed = [f"{run.provider}: {run.error}" for run in self.runs if not run.ok]
        return "; ".join(failed) or None

    @property
    def exit_code(self) -> int:
        return next((run.exit_code or 1 for run in self.runs if not run.ok), 0)

    @property
    def hint(self) -> str | None:
        return next((run.hint for run in self.runs if not run.ok and run.hint), None)

    def to_dict(self) -> dict[str, Any]:
        """The shape `spot sample --json` prints (Decimals are left for the caller to render)."""
        data: dict[str, Any] = {
            "ok": self.ok,
            "resources": self.resources,
            "duration_s": round(self.duration_s, 3),
            "run_id": self.run_id,
            "sampled_at": self.sampled_at,
            "spend_usd_since_last": self.spend_usd_since_last,
            "account_usd_since_last": self.account_usd_since_last,
            "error": self.error,
            "skipped": self.skipped,
            "runs": [
                {
                    "provider": r.provider, "run_id": r.run_id, "ok": r.ok, "resources": r.resource_count,
                    "started_at": r.started_at, "sampled_at": r.sampled_at, "finished_at": r.finished_at,
                    "spend_usd_since_last": r.spend_usd_since_last,
                    "account_usd_since_last": r.account_usd_since_last, "error": r.error,
                }
                for r in self.runs
            ],
        }
        if self.skipped:
            data["message"] = self.skipped_because
        return data


@dataclass
class _Reading:
    provider: str
    run_id: str
    started_at: datetime
    sampled_at: datetime | None = None
    items: list[BillingItem] = field(default_factory=list)
    provider_clock_at: datetime | None = None
    error: str | None = None
    exit_code: int = 0
    hint: str | None = None


# -- the run ------------------------------------------------------------------------------------

def sample(
    settings: Settings,
    store: Store,
    *,
    clock: Clock = _utc_now,
    provider_factory: ProviderFactory = open_provider,
    refresh_rollup: bool = True,
) -> SampleRun:
    """Sample every provider once and record the result (see the module docstring).

    Raises ConfigError when no provider is configured, and StoreError when the rows cannot be
    written (then nothing was recorded); a provider's failure is recorded, not raised.
    """
    providers = sampled_providers(settings)
    if not providers:
        raise ConfigError(
            "no provider is configured, so there is no billing to sample",
            hint="add a [providers.NAME] table to the config file",
        )
    began = time.perf_counter()
    # One run at a time: an flock in home on a file store, a lock in the catalog on a lake
    # (every host's cron), so two runs never double-sample.
    with named_locks(settings, store.home).try_hold(LOCK_FILE) as holder:
        if holder is not None:
            return SampleRun((), time.perf_counter() - began, skipped=True,
                             skipped_because=f"another `spot sample` is in progress ({holder}); this run skipped")
        readings = [_read(settings, name, clock, provider_factory) for name in providers]
        # One sample time for every account read by this run (the last answer's): the report
        # bounds a window by samples, and accounts sampled together must bound it together.
        times = [r.sampled_at for r in readings if r.sampled_at is not None]
        for reading in readings:
            if reading.sampled_at is not None:
                reading.sampled_at = max(times)
        runs = _record(store, settings, readings, clock)
    duration_s = time.perf_counter() - began
    errors: tuple[str, ...] = ()
    if refresh_rollup and any(run.ok for run in runs):
        errors = _refresh_rollup(store, clock())
    return SampleRun(tuple(runs), duration_s, errors=errors)


def _read(settings: Settings, name: str, clock: Clock, provider_factory: ProviderFactory) -> _Reading:
    reading = _Reading(name, str(uuid.uuid4()), clock())
    try:
        with provider_factory(settings, name) as provider:
            answer = provider.read_billing()
        reading.items, reading.provider_clock_at = answer.items, answer.provider_clock_at
        reading.sampled_at = clock()
    except SpotError as exc:
        reading.error, reading.exit_code, reading.hint = exc.message, exc.exit_code, exc.hint
    except Exception as exc:  # noqa: BLE001 - recorded as a failed run: a bug must not look like $0
        reading.error, reading.exit_code = f"internal error: {type(exc).__name__}: {exc}", 70
    if reading.error is not None:
        reading.error = _one_line(reading.error, settings, name)
        log.info("billing of provider %s unreadable: %s", name, reading.error)
    return reading


def _one_line(message: str, settings: Settings, provider: str) -> str:
    config = settings.providers.get(provider)
    key = config.api_key.get_secret_value() if config is not None and config.api_key is not None else ""
    if key:
        message = message.replace(key, "***")  # providers never put it there; make sure of it
    message = " ".join(message.split())
    return message[:_MAX_ERROR_CHARS]


# -- recording ----------------------------------------------------------------------------------

_INSERT_SAMPLE = """
INSERT INTO billing_samples (run_id, sampled_at, provider, resource_id, resource_type, name, tier, usd_per_hour,
                             total_bill_usd, active, raw, created_at, excluded)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
_INSERT_RUN = """
INSERT INTO sample_runs (run_id, provider, started_at, finished_at, ok, error, resource_count, seq,
                         provider_clock_at, clock_behind_s, sampled_at)
VALUES (?, ?, ?, ?, ?, ?, ?, (SELECT coalesce(max(seq), 0) + 1 FROM sample_runs), ?, ?, ?)
"""
_LATEST_RUN_STARTED = "SELECT started_at FROM sample_runs ORDER BY seq DESC LIMIT 1"
_PREVIOUS_ACTIVE = """
SELECT resource_type, resource_id, name FROM billing_samples
WHERE active AND run_id = (SELECT run_id FROM sample_runs WHERE ok AND provider = ? ORDER BY seq DESC LIMIT 1)
ORDER BY resource_type, resource_id
"""
# Adopted once: checked rather than left to the key (a DuckLake store holds no keys).
_ADOPT = """
INSERT INTO fleet_resources SELECT $provider, $type, $id, $name, $tier, $at, 'adopted'
WHERE NOT EXISTS (SELECT 1 FROM fleet_resources
                  WHERE provider = $provider AND resource_type = $type AND resource_id = $id)
"""
# The run's own increases, by the ledger's rules (migration 0008): the fleet's, and the account's.
_SINCE_LAST = """
SELECT (SELECT count(*) FROM sample_runs WHERE ok AND provider = $provider) > 1,
       coalesce(sum(increase_usd) FILTER (WHERE in_fleet), 0), coalesce(sum(increase_usd), 0)
FROM billing_increases($at, $at + INTERVAL 1 MICROSECOND) WHERE run_id = $run_id
"""


def _record(store: Store, settings: Settings, readings: list[_Reading], clock: Clock) -> list[ProviderRun]:
    runs = []
    try:
        with store.transaction() as con:
            for reading in readings:
                runs.append(_record_one(con, settings, reading, clock))
    except duckdb.Error as exc:
        raise StoreError(f"could not record the billing samples: {' '.join(str(exc).split())}") from None
    return runs


def _record_one(con: duckdb.DuckDBPyConnection, settings: Settings, r: _Reading, clock: Clock) -> ProviderRun:
    # A clock behind the previous run's (NTP stepped it back) is noted, and the run is still
    # recorded in sequence: refusing it would stop sampling and close the gate.
    latest = con.execute(_LATEST_RUN_STARTED).fetchone()
    behind_s = (latest[0] - r.started_at).total_seconds() if latest and latest[0] > r.started_at else None
    if behind_s is not None:
        log.warning("the clock reads %.3f s behind the previous sampler run's; recorded in sequence", behind_s)
    if r.error is None:
        r.error = _vanished(con, r)
    if r.error is not None:
        finished_at = clock()
        con.execute(_INSERT_RUN, [r.run_id, r.provider, r.started_at, finished_at, False, r.error, 0, None, behind_s,
                                  None])
        return ProviderRun(r.provider, r.run_id, r.started_at, finished_at, False, 0, error=r.error,
                           exit_code=r.exit_code or 1, hint=r.hint)
    tier_of = tier_resolver(settings, r.provider)
    rows = []
    for item in r.items:
        tier = tier_of(item)
        rows.append([r.run_id, r.sampled_at, r.provider, item.resource_id, item.resource_type, item.name, tier,
                     _micro(item.usd_per_hour), _micro(item.total_bill_usd), item.active,
                     json.dumps(item.raw, default=str), item.created_at, item.excluded])
        if tier is not None:  # named by spot's convention for a configured tier: the fleet's
            con.execute(_ADOPT, {"provider": r.provider, "type": item.resource_type, "id": item.resource_id,
                                 "name": item.name, "tier": tier, "at": r.sampled_at})
    finished_at = clock()
    con.execute(_INSERT_RUN, [r.run_id, r.provider, r.started_at, finished_at, True, None, len(rows),
                              r.provider_clock_at, behind_s, r.sampled_at])
    if rows:
        con.executemany(_INSERT_SAMPLE, rows)
        anomalies.record(con, r.run_id, r.sampled_at)
    earlier, fleet, account = con.execute(
        _SINCE_LAST, {"provider": r.provider, "at": r.sampled_at, "run_id": r.run_id}).fetchone()
    return ProviderRun(r.provider, r.run_id, r.started_at, finished_at, True, len(rows), sampled_at=r.sampled_at,
                       spend_usd_since_last=Decimal(fleet) if earlier else None,
                       account_usd_since_last=Decimal(account) if earlier else None)


def _vanished(con: duckdb.DuckDBPyConnection, r: _Reading) -> str | None:
    """Why the reading is suspect: a resource active at the account's last good run that is in
    neither list now (an emptied, cut or reshaped answer). None when every one is accounted for."""
    listed = {(item.resource_type, item.resource_id) for item in r.items}
    missing = [(kind, rid, name) for kind, rid, name in con.execute(_PREVIOUS_ACTIVE, [r.provider]).fetchall()
               if (kind, rid) not in listed]
    if not missing:
        return None
    kind, rid, name = missing[0]
    more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
    label = f"{kind} {rid}" + (f" ({name})" if name else "")
    return (f"billing answer is missing {label}{more}, active at the last good run and now in neither the "
            "active nor the deleted list: not trusted as a good run")


def _micro(value: Decimal | None) -> Decimal | None:
    return None if value is None else Decimal(value).quantize(_MICRO, rounding=ROUND_HALF_EVEN)


def tier_resolver(settings: Settings, provider: str) -> Callable[[BillingItem], str | None]:
    """Which tier a billed resource belongs to: a VM by its node name (``spot-<tier>-<n>``), a
    volume by its tier's ``weights_volume`` (or the numbered twin later nodes use); else None."""
    volumes = {t.weights_volume: t.name for t in settings.tiers.values()
               if t.provider == provider and t.weights_volume}

    def tier_of(item: BillingItem) -> str | None:
        name = item.name or ""
        if item.resource_type != "volume":
            parsed = parse_node_name(name)
            if parsed is not None:
                return parsed[0]
        if item.resource_type != "vm":
            if name in volumes:
                return volumes[name]
            twin = _VOLUME_TWIN.match(name)
            if twin is not None and twin["base"] in volumes:
                return volumes[twin["base"]]
        return None

    return tier_of


def _refresh_rollup(store: Store, now: datetime) -> tuple[str, ...]:
    # The reports' daily roll-up (spotinference.costs.rollup) adds whole settled days; keeping it
    # current here keeps every spend query (the gate's included) scanning a day of raw samples.
    # A failure costs only speed: the reports refresh it themselves.
    try:
        from ..costs import rollup

        rollup.refresh(store, now)
    except Exception as exc:  # noqa: BLE001 - the samples are recorded; this is housekeeping
        log.info("billing roll-up not refreshed: %s", exc)
        return (f"roll-up not refreshed: {' '.join(str(exc).split())}",)
    return ()
