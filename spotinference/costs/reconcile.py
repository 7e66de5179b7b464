"""`spot cost reconcile`: our ledger's spend, resource by resource and hour by hour, against the
provider's own billing history.

The two sides
-------------
* OURS: the ledger's counted samples (``queries/spend_by_resource_sample.sql``, the rules of
  ``billing_increases``), placed on the PROVIDER's timeline by each run's ``provider_clock_at``
  (the provider's HTTP ``Date`` at the sample), never by our wall clock. For each resource we
  keep its cumulative figure after every sample: the ledger's high-water mark, i.e. the bill we
  measured from at our first sample plus every increase the ledger counted since.
* THE PROVIDER'S: its hourly history (``Provider.billing_history``): each hour's bill for the
  minutes that ENDED in that UTC hour of its clock. Summed from the resource's creation, these
  give the provider's cumulative bill at every hour boundary, ``Q(B)``.

The rule at hour boundaries
---------------------------
Our samples are not on the hour: a sample a few seconds after 13:00 reads the minutes that
ended between the previous sample (12:59:40) and 13:00 too. Comparing "our increases read in
13:00-14:00" with "the provider's 13:00-14:00 point" would call that minute a mismatch in both
hours. So the figures are compared cumulatively, at each hour boundary B, between the samples
either side of it:

    ours(last sample before B)  <=  Q(B)  <=  ours(first sample at or after B)

(a sample whose provider clock reads exactly B, which the ``Date`` header cuts to the second,
was taken at or after B). ``lag(B) = Q(B) - ours(last sample before B)`` is the spend that ended
before B but was read by the sample after it: "carried" across the boundary. It is explained
when it lies in ``[0, straddle]``, where the straddle is what the sample after B added. Before
our first sample the bill is a baseline (no lower bound); after our last sample it is "not read
yet" (no upper bound, except that spend we were already missing at the boundary before is taken
to persist rather than to be read later). Whatever lies outside the bounds is UNEXPLAINED: the
least discrepancy the figures prove (a loss smaller than one straddle hides inside it, which is
why the sampler runs every minute). Figures within ``ROUNDING_USD`` are equal (the ledger keeps
micro-dollars, the provider's points more places).

The rows are the provider hours from the hour of a resource's first sample to that of its last
(within ``--since``/``--until``, in the provider's clock, rounded out to whole hours). Each shows
``ours`` (what the ledger counted between the last samples before the hour's two boundaries),
``provider`` (its point), their ``difference``
(ours - provider = lag at the hour's start - lag at its end), the part of it ``carried`` across
the boundaries and the ``unexplained`` rest, which telescopes: over a day or the whole span the
unexplained parts add up to the unexplained difference of that day or span. A row is
``matched`` (difference within rounding), ``carried`` (a difference, all of it spend read on the
other side of an hour boundary: cause ``boundary``, ``gap`` when the samples either side of it
are more than ``gap_s`` apart or a failed run lies between them, ``before_first_sample``,
``after_last_sample``) or ``mismatched`` (cause ``anomaly`` when the ledger recorded one for the
resource in that hour, else ``gap``, else ``outside the fleet``, else ``unexplained``).
Anomalies (a decrease, a missing total) count nothing by the ledger's rules, so the totals still
match; every row carries the anomalies recorded in its hour, so the resource and hour are named.

The verdict is per resource and provider UTC day: a day whose unexplained difference exceeds the
tolerance (default one cent) fails the reconciliation, as does a resource whose history the
provider could not give (reconciliation that could not be made is not a pass).

The credit balance: the provider answers only the balance NOW, and spot stores none, so the
change over the span is not computed: the balance is reported as read, with the provider.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from ..config import Settings
from ..errors import ReconcileMismatchError, SpotError
from ..providers.base import BilledHour, Provider
from ..store import Store

HOUR = timedelta(hours=1)
ROUNDING_USD = Decimal("0.000001")  # the ledger's scale: DECIMAL(18, 6)
DEFAULT_TOLERANCE_USD = Decimal("0.01")  # per resource-day
DEFAULT_GAP_S = 120.0  # samples further apart than this (provider clock) straddle a gap
_FAR_PAST = datetime(1970, 1, 1, tzinfo=UTC)
_FAR_FUTURE = datetime(2200, 1, 1, tzinfo=UTC)
_ZERO = Decimal(0)


# -- typed rows ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ResourceRef:
    provider: str
    resource_type: str
    resource_id: str
    name: str | None = None
    tier: str | None = None
    in_fleet: bool = True

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.provider, self.resource_type, self.resource_id)


@dataclass(frozen=True, slots=True)
class SamplePoint:
    """One counted sample of one resource: when (provider clock) and the ledger's figures."""

    seq: int
    provider_clock_at: datetime
    increase_usd: Decimal
    cumulative_usd: Decimal  # the ledger's high-water mark after this sample


@dataclass(frozen=True, slots=True)
class RunPoint:
    """One sampler run of an account (ok or failed), by sequence."""

    seq: int
    ok: bool
    provider_clock_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class AnomalyPoint:
    """A sample the ledger refused (``decrease`` | ``missing_total`` | ``unexplained_first_total``), placed by provider clock."""

    provider: str
    resource_type: str
    resource_id: str
    kind: str
    provider_clock_at: datetime
    total_bill_usd: Decimal | None = None
    previous_high_usd: Decimal | None = None

    @property
    def hour_start(self) -> datetime:
        return floor_hour(self.provider_clock_at)


@dataclass(frozen=True, slots=True)
class Boundary:
    """The comparison at one hour boundary: the provider's cumulative bill between our two samples."""

    at: datetime
    provider_cumulative_usd: Decimal | None
    ours_before_usd: Decimal
    lag_usd: Decimal | None  # provider - ours before: spend read after the boundary
    carried_usd: Decimal | None  # the explained part of the lag
    excess_usd: Decimal | None  # the rest: lag - carried
    kind: str  # boundary | gap | before_first_sample | after_last_sample


@dataclass(frozen=True, slots=True)
class HourRow:
    resource: ResourceRef
    hour_start: datetime
    ours_usd: Decimal
    provider_usd: Decimal | None
    difference_usd: Decimal | None  # ours - provider
    carried_usd: Decimal | None
    unexplained_usd: Decimal | None
    status: str  # matched | carried | mismatched | unknown
    cause: str | None
    samples: int
    anomalies: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {**_resource_dict(self.resource), "hour_start": self.hour_start, "ours_usd": self.ours_usd,
                "provider_usd": self.provider_usd, "difference_usd": self.difference_usd,
                "carried_usd": self.carried_usd, "unexplained_usd": self.unexplained_usd, "status": self.status,
                "cause": self.cause, "samples": self.samples, "anomalies": list(self.anomalies)}


@dataclass(frozen=True, slots=True)
class DayRow:
    resource: ResourceRef
    day: date
    ours_usd: Decimal
    provider_usd: Decimal | None
    difference_usd: Decimal | None
    unexplained_usd: Decimal | None
    within_tolerance: bool

    def to_dict(self) -> dict[str, Any]:
        return {**_resource_dict(self.resource), "day": self.day, "ours_usd": self.ours_usd,
                "provider_usd": self.provider_usd, "difference_usd": self.difference_usd,
                "unexplained_usd": self.unexplained_usd, "within_tolerance": self.within_tolerance}


@dataclass(frozen=True, slots=True)
class Unavailable:
    resource: ResourceRef
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {**_resource_dict(self.resource), "error": self.error}


@dataclass(frozen=True, slots=True)
class Credit:
    provider: str
    credit_usd: Decimal | None
    error: str | None = None
    note: str = ("the account's balance as the provider reads it now (no earlier balance is stored, "
                 "so the change over the span is not computed)")

    def to_dict(self) -> dict[str, Any]:
        return {"provider": self.provider, "credit_usd": self.credit_usd, "error": self.error, "note": self.note}


@dataclass
class Reconciliation:
    since: datetime | None
    until: datetime | None
    tolerance_usd: Decimal
    hours: list[HourRow] = field(default_factory=list)
    days: list[DayRow] = field(default_factory=list)
    anomalies: list[AnomalyPoint] = field(default_factory=list)
    unavailable: list[Unavailable] = field(default_factory=list)
    credits: list[Credit] = field(default_factory=list)

    @property
    def ours_usd(self) -> Decimal:
        return sum((h.ours_usd for h in self.hours), _ZERO)

    @property
    def provider_usd(self) -> Decimal | None:
        return _sum_or_none(h.provider_usd for h in self.hours)

    @property
    def difference_usd(self) -> Decimal | None:
        return None if self.provider_usd is None else self.ours_usd - self.provider_usd

    @property
    def carried_usd(self) -> Decimal | None:
        return _sum_or_none(h.carried_usd for h in self.hours)

    @property
    def unexplained_usd(self) -> Decimal | None:
        return _sum_or_none(h.unexplained_usd for h in self.hours)

    @property
    def failing_days(self) -> list[DayRow]:
        return [d for d in self.days if not d.within_tolerance]

    @property
    def ok(self) -> bool:
        return not self.failing_days and not self.unavailable

    def failure(self) -> ReconcileMismatchError | None:
        """The error the CLI exits with, or None when everything reconciles."""
        if self.ok:
            return None
        parts = [f"{d.resource.resource_type} {d.resource.resource_id} on {d.day.isoformat()} "
                 f"({_signed(d.unexplained_usd)} unexplained)" for d in self.failing_days[:3]]
        if len(self.failing_days) > 3:
            parts.append(f"and {len(self.failing_days) - 3} more")
        if self.unavailable:
            parts.append(f"{len(self.unavailable)} resource(s) not compared, without provider history "
                         f"({self.unavailable[0].error})")
        head = (f"reconciliation differs past ${self.tolerance_usd} per resource-day" if self.failing_days
                else "reconciliation incomplete")
        return ReconcileMismatchError(
            f"{head}: " + "; ".join(parts),
            hint="see the mismatched rows and their causes (spot cost reconcile --json for every row)")

    def to_dict(self) -> dict[str, Any]:
        return {
            "since": self.since, "until": self.until, "tolerance_usd": self.tolerance_usd, "ok": self.ok,
            "ours_usd": self.ours_usd, "provider_usd": self.provider_usd, "difference_usd": self.difference_usd,
            "carried_usd": self.carried_usd, "unexplained_usd": self.unexplained_usd,
            "hours": [h.to_dict() for h in self.hours],
            "matched": sum(h.status == "matched" for h in self.hours),
            "carried": sum(h.status == "carried" for h in self.hours),
            "mismatched": sum(h.status in ("mismatched", "unknown") for h in self.hours),
            "days": [d.to_dict() for d in self.days],
            "anomalies": [{"provider": a.provider, "resource_type": a.resource_type, "resource_id": a.resource_id,
                           "kind": a.kind, "hour_start": a.hour_start, "provider_clock_at": a.provider_clock_at,
                           "total_bill_usd": a.total_bill_usd, "previous_high_usd": a.previous_high_usd}
                          for a in self.anomalies],
            "unavailable": [u.to_dict() for u in self.unavailable],
            "credit": [c.to_dict() for c in self.credits],
        }


# -- the pure matching -----------------------------------------------------------------------------

def floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def ceil_hour(moment: datetime) -> datetime:
    floor = floor_hour(moment)
    return floor if floor == moment else floor + HOUR


def match_resource(resource: ResourceRef, samples: Sequence[SamplePoint], history: Iterable[BilledHour], *,
                   runs: Sequence[RunPoint] = (), anomalies: Iterable[AnomalyPoint] = (),
                   since: datetime | None = None, until: datetime | None = None,
                   gap_s: float = DEFAULT_GAP_S) -> list[HourRow]:
    """One resource's rows, one per provider hour from its first sample's hour to its last's
    (within ``[since, until)``, whole hours). ``history`` must start at the resource's creation
    (an hour it lacks billed nothing) so that its sums are the provider's cumulative bill."""
    if not samples:
        return []
    samples = sorted(samples, key=lambda s: s.seq)
    times = [s.provider_clock_at for s in samples]
    points = {floor_hour(h.hour_start): h.incurred_usd for h in history}
    failed = sorted(r.seq for r in runs if not r.ok)
    anchor = samples[0].cumulative_usd - samples[0].increase_usd
    first = floor_hour(min(times))
    last = floor_hour(max(times)) + HOUR
    if since is not None:
        first = max(first, floor_hour(since))
    if until is not None:
        last = min(last, ceil_hour(until))
    by_hour: dict[datetime, list[str]] = defaultdict(list)
    for a in anomalies:
        by_hour[a.hour_start].append(a.kind)

    ordered = sorted(points)
    prefix: list[Decimal | None] = [_ZERO]  # prefix[i]: the sum of the first i hours (None once one is unknown)
    for hour in ordered:
        value, before_sum = points[hour], prefix[-1]
        prefix.append(None if value is None or before_sum is None else before_sum + value)
    failed_hours = {floor_hour(r.provider_clock_at) for r in runs if not r.ok and r.provider_clock_at is not None}

    def cumulative_at(moment: datetime) -> Decimal | None:
        return prefix[bisect.bisect_left(ordered, moment)]

    monotonic = times == sorted(times)

    def before_count(moment: datetime) -> int:
        return bisect.bisect_left(times, moment) if monotonic else sum(t < moment for t in times)

    def boundary(moment: datetime, prev_excess: Decimal = _ZERO) -> Boundary:
        i = before_count(moment)
        before = samples[i - 1] if i > 0 else None
        after = samples[i] if i < len(samples) else None
        ours = before.cumulative_usd if before else anchor
        provider = cumulative_at(moment)
        if before is None:
            kind = "before_first_sample"
        elif after is None:
            kind = "after_last_sample"
        elif ((after.provider_clock_at - before.provider_clock_at).total_seconds() > gap_s
              or bisect.bisect_right(failed, before.seq) < bisect.bisect_left(failed, after.seq)):
            kind = "gap"
        else:
            kind = "boundary"
        if provider is None:
            return Boundary(moment, None, ours, None, None, None, kind)
        lag = provider - ours
        low = _ZERO if before is not None else None
        high = after.cumulative_usd - ours if after is not None else None
        carried = lag
        if low is not None and carried < low:
            carried = low
        if high is not None and carried > high:
            carried = high
        excess = lag - carried
        if after is None and before is not None:
            # After our last sample nothing bounds the provider's later minutes, so a difference
            # already proven at the boundary before persists; only growth past it is "not read yet".
            carried = max(lag - prev_excess, _ZERO)
            excess = lag - carried
        if abs(excess) <= ROUNDING_USD:
            carried, excess = lag, _ZERO
        return Boundary(moment, provider, ours, lag, carried, excess, kind)

    rows = []
    hour = first
    start = boundary(hour)
    while hour < last:
        end = boundary(hour + HOUR, start.excess_usd or _ZERO)
        ours = end.ours_before_usd - start.ours_before_usd
        count = before_count(hour + HOUR) - before_count(hour)
        seen = tuple(by_hour.get(hour, ()))
        provider = points.get(hour, _ZERO)
        if provider is None or start.lag_usd is None or end.lag_usd is None:
            rows.append(HourRow(resource, hour, ours, provider, None, None, None, "unknown",
                                "the provider gave no figure for this hour or one before it", count, seen))
        else:
            difference = ours - provider
            carried = start.carried_usd - end.carried_usd  # type: ignore[operator]
            unexplained = start.excess_usd - end.excess_usd  # type: ignore[operator]
            gap_here = any(b.kind == "gap" for b in (start, end)) or hour in failed_hours
            if abs(difference) <= ROUNDING_USD:
                status, cause = "matched", ("anomaly" if seen else None)
            elif abs(unexplained) <= ROUNDING_USD:
                status = "carried"
                kinds = list(dict.fromkeys(b.kind for b in (start, end) if b.carried_usd != 0))
                cause = "gap" if "gap" in kinds else (", ".join(kinds) or "boundary")
            else:
                status = "mismatched"
                cause = ("anomaly" if seen else "gap" if gap_here
                         else "outside the fleet" if not resource.in_fleet else "unexplained")
            rows.append(HourRow(resource, hour, ours, provider, difference, carried, unexplained, status, cause,
                                count, seen))
        start, hour = end, hour + HOUR
    return rows


def days_of(hours: Iterable[HourRow], tolerance_usd: Decimal) -> list[DayRow]:
    """Per resource and provider UTC day: sums of the hours; within tolerance by the unexplained part."""
    groups: dict[tuple[tuple[str, str, str], date], list[HourRow]] = defaultdict(list)
    refs: dict[tuple[str, str, str], ResourceRef] = {}
    for h in hours:
        groups[(h.resource.key, h.hour_start.date())].append(h)
        refs[h.resource.key] = h.resource
    days = []
    for (key, day), rows in sorted(groups.items()):
        ours = sum((h.ours_usd for h in rows), _ZERO)
        provider = _sum_or_none(h.provider_usd for h in rows)
        unexplained = _sum_or_none(h.unexplained_usd for h in rows)
        days.append(DayRow(refs[key], day, ours, provider, None if provider is None else ours - provider,
                           unexplained, unexplained is not None and abs(unexplained) <= tolerance_usd))
    return days


def _sum_or_none(values: Iterable[Decimal | None]) -> Decimal | None:
    total = _ZERO
    for value in values:
        if value is None:
            return None
        total += value
    return total


def _signed(value: Decimal | None) -> str:
    if value is None:
        return "unknown"
    return f"{'-' if value < 0 else '+'}${abs(value):.6f}"


def _resource_dict(r: ResourceRef) -> dict[str, Any]:
    return {"provider": r.provider, "resource_type": r.resource_type, "resource_id": r.resource_id,
            "name": r.name, "tier": r.tier, "in_fleet": r.in_fleet}


# -- reading the store and asking the provider ----------------------------------------------------

ProviderOpener = Callable[[Settings, str], Provider]


def reconcile(store: Store, settings: Settings, *, since: datetime | None = None, until: datetime | None = None,
              tolerance_usd: Decimal = DEFAULT_TOLERANCE_USD, gap_s: float = DEFAULT_GAP_S,
              open_provider: ProviderOpener | None = None) -> Reconciliation:
    """Our samples in ``[since, until)`` (the PROVIDER's clock, whole hours) against each
    resource's provider history. Per-resource provider failures are listed, not raised."""
    from ..providers.errors import ProviderError
    from ..providers.registry import open_provider as default_opener
    from ..reports import run_query

    opener = open_provider or default_opener
    # An hour either side, so that the boundaries of the first and last hour have their samples.
    start = floor_hour(since) - HOUR if since is not None else _FAR_PAST
    end = ceil_hour(until) + HOUR if until is not None else _FAR_FUTURE
    params = {"window_start": start, "window_end": end}
    result = Reconciliation(since, until, tolerance_usd)

    refs: dict[tuple[str, str, str], ResourceRef] = {}
    samples: dict[tuple[str, str, str], list[SamplePoint]] = defaultdict(list)
    for row in run_query(store, "spend_by_resource_sample", **params).records():
        key = (row["provider"], row["resource_type"], row["resource_id"])
        refs[key] = ResourceRef(*key, row["name"], row["tier"], bool(row["in_fleet"]))
        samples[key].append(SamplePoint(row["seq"], row["provider_clock_at"].astimezone(UTC),
                                        Decimal(row["increase_usd"]), Decimal(row["cumulative_usd"])))
    runs: dict[str, list[RunPoint]] = defaultdict(list)
    for row in run_query(store, "sample_runs_provider_clock", **params).records():
        clock = row["provider_clock_at"]
        runs[row["provider"]].append(RunPoint(row["seq"], bool(row["ok"]), clock.astimezone(UTC) if clock else None))
    anomalies: dict[tuple[str, str, str], list[AnomalyPoint]] = defaultdict(list)
    for row in run_query(store, "billing_anomalies_provider_clock", **params).records():
        point = AnomalyPoint(row["provider"], row["resource_type"], row["resource_id"], row["kind"],
                             row["provider_clock_at"].astimezone(UTC), row["total_bill_usd"],
                             row["previous_high_usd"])
        if (since is None or point.provider_clock_at >= floor_hour(since)) and (
                until is None or point.provider_clock_at < ceil_hour(until)):
            anomalies[(point.provider, point.resource_type, point.resource_id)].append(point)
            result.anomalies.append(point)

    for provider_name in sorted({key[0] for key in refs}):
        keys = sorted(k for k in refs if k[0] == provider_name)
        try:
            provider = opener(settings, provider_name)
        except SpotError as exc:
            result.unavailable += [Unavailable(refs[k], exc.message) for k in keys]
            continue
        with provider:
            for key in keys:
                try:
                    history = provider.billing_history(key[1], key[2])
                except ProviderError as exc:
                    result.unavailable.append(Unavailable(refs[key], exc.message))
                    continue
                result.hours += match_resource(refs[key], samples[key], history, runs=runs[provider_name],
                                               anomalies=anomalies.get(key, ()), since=since, until=until,
                                               gap_s=gap_s)
            try:
                result.credits.append(Credit(provider_name, provider.credit_usd()))
            except ProviderError as exc:
                result.credits.append(Credit(provider_name, None, exc.message))
    result.hours.sort(key=lambda h: (h.resource.key, h.hour_start))
    result.days = days_of(result.hours, tolerance_usd)
    return result
