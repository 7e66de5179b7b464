"""The daily billing roll-up (table ``billing_daily``, migrations 0006 and 0008;
how far it has checked in ``billing_rollup_progress``, migration 0014).

Whole UTC days that ended at least ``SETTLE`` before ``now`` are summed from the raw samples with
the same ``billing_increases`` definition every report uses, a few days per transaction so no
refresh holds the database for long (the first refresh of a year of samples takes about a minute
in total, in short steps; later ones add a day). Rolled days are never rewritten: a sample is
written with the sampler's clock, so once a day is over (plus a margin for a run in flight at
midnight) no row can arrive for it. The same holds for a settled day with no samples, so the
refresh records the first day it has not checked and never walks a quiet stretch twice.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ..store import Store

SETTLE = timedelta(hours=1)
DAYS_PER_STEP = 7

# The first day neither rolled nor checked empty; NULL while there are no samples at all.
_FIRST_UNCHECKED = """
SELECT greatest((SELECT max(checked_until) FROM billing_rollup_progress),
                coalesce((SELECT max(day) + 1 FROM billing_daily),
                         (SELECT CAST(min(sampled_at) AT TIME ZONE 'UTC' AS DATE) FROM billing_samples)))
"""

_ROLL = """
INSERT INTO billing_daily
SELECT day, provider, resource_id, resource_type, tier, sum(increase_usd), count(*),
       max(sampled_at), max(total_bill_usd)
FROM billing_increases($day_start, $day_end)
GROUP BY day, provider, resource_id, resource_type, tier
"""


def _midnight(day) -> datetime:  # noqa: ANN001 - a datetime.date
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def refresh(store: Store, now: datetime) -> int:
    """Roll up every settled day not yet rolled; returns how many days were added.

    Days without samples add no rows; the reports read such days raw (there is nothing to read),
    so the roll-up stays correct whatever the gaps. Such days still count as added (walked) once,
    and are not walked again: a second refresh at the same ``now`` returns 0.
    """
    last = (now - SETTLE).astimezone(UTC).date()  # days before this one are settled
    with store.reading() as con:
        (cursor,) = con.execute(_FIRST_UNCHECKED).fetchone()
    added = 0
    while cursor is not None and cursor < last:
        stop = min(cursor + timedelta(days=DAYS_PER_STEP), last)
        with store.transaction() as con:
            (checked,) = con.execute(_FIRST_UNCHECKED).fetchone()
            if checked is None:  # the samples were deleted meanwhile: nothing to roll
                break
            if checked > cursor:  # another process got here first
                cursor = checked
                continue
            con.execute("SET enable_progress_bar = false")  # never draw on the user's terminal
            con.execute(_ROLL, {"day_start": _midnight(cursor), "day_end": _midnight(stop)})
            # Same transaction as the rows: a refresh killed mid-way leaves both or neither.
            con.execute("DELETE FROM billing_rollup_progress")
            con.execute("INSERT INTO billing_rollup_progress VALUES (?)", [stop])
        added += (stop - cursor).days
        cursor = stop
    return added
