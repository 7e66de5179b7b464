"""A budget timezone in which a test's "today" is well under way, whatever the UTC time.

Budget periods (a key's day and month) start at midnight in ``budget.timezone``. A test that
seeds a ledger with "earlier today" and "yesterday, this month" needs a day already under way,
not about to end, and not the 1st of the month. Rather than skipping near midnight UTC or on the
1st, the test runs in a fixed-offset zone (``Etc/GMT±N``) where that holds now: among UTC−12 to
UTC+14 one always does.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def zone_name(offset_h: int) -> str:
    if offset_h == 0:
        return "UTC"
    return f"Etc/GMT{-offset_h:+d}"  # POSIX sign: Etc/GMT-3 is UTC+3


def zone_well_into_a_day(now: datetime, *, since_midnight: timedelta, before_midnight: timedelta = timedelta(hours=1),
                         not_the_first: bool = False) -> str:
    for offset_h in (0, *range(-1, -13, -1), *range(1, 15)):
        local = now.astimezone(UTC) + timedelta(hours=offset_h)
        into = timedelta(hours=local.hour, minutes=local.minute, seconds=local.second)
        if into >= since_midnight and timedelta(days=1) - into >= before_midnight and not (not_the_first and local.day == 1):
            return zone_name(offset_h)
    raise AssertionError(f"no UTC offset puts {now.isoformat()} {since_midnight} into a day")
