"""The emulated clock: real elapsed time times a scale, plus manual advances, in microseconds.

Emulated time is an integer count of microseconds since the emulator's first start (its epoch),
so every delay, transition and billing minute is exact. It keeps running while the emulator is
down: a restarted emulator resumes at ``emulated time saved + real time since × scale``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime

US_PER_S = 1_000_000
US_PER_MINUTE = 60 * US_PER_S
US_PER_HOUR = 60 * US_PER_MINUTE


def seconds_to_us(seconds: float) -> int:
    return round(seconds * US_PER_S)


class EmulatedClock:
    """``now_us()`` never goes backwards; ``advance`` jumps ahead at once."""

    def __init__(
        self,
        *,
        time_scale: float = 1.0,
        epoch_unix: float | None = None,
        start_us: int = 0,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if time_scale <= 0:
            raise ValueError(f"time_scale must be positive, got {time_scale}")
        self.time_scale = time_scale
        self._monotonic = monotonic
        self._wall = wall
        self.epoch_unix = wall() if epoch_unix is None else epoch_unix
        self._base_us = start_us
        self._base_mono = monotonic()
        self._last_us = start_us

    @classmethod
    def resume(cls, saved: dict, *, time_scale: float, wall: Callable[[], float] = time.time) -> EmulatedClock:
        """The clock of a restarted emulator: the saved time plus the downtime, scaled."""
        down_s = max(0.0, wall() - float(saved["saved_at_unix"]))
        start = int(saved["emulated_us"]) + seconds_to_us(down_s * time_scale)
        return cls(time_scale=time_scale, epoch_unix=float(saved["epoch_unix"]), start_us=start, wall=wall)

    def now_us(self) -> int:
        elapsed_s = self._monotonic() - self._base_mono
        now = self._base_us + seconds_to_us(elapsed_s * self.time_scale)
        self._last_us = max(self._last_us, now)
        return self._last_us

    def advance(self, seconds: float) -> int:
        if seconds < 0:
            raise ValueError("the clock only goes forward")
        self._base_us += seconds_to_us(seconds)
        return self.now_us()

    @property
    def epoch_us(self) -> int:
        """The epoch as whole Unix microseconds: hour buckets and history dates are counted from it."""
        return round(self.epoch_unix * US_PER_S)

    def datetime_at(self, us: int) -> datetime:
        return datetime.fromtimestamp(self.epoch_unix + us / US_PER_S, UTC)

    def iso_at(self, us: int | None) -> str | None:
        """Hyperstack's date-time format: UTC, to the second, without an offset."""
        if us is None:
            return None
        return self.datetime_at(us).strftime("%Y-%m-%dT%H:%M:%S")

    def http_date(self) -> str:
        """Now as an HTTP ``Date`` (RFC 9110 IMF-fixdate): the provider's clock, as its answers carry it."""
        return format_datetime(self.datetime_at(self.now_us()), usegmt=True)

    def to_json(self) -> dict:
        return {"emulated_us": self.now_us(), "saved_at_unix": self._wall(), "epoch_unix": self.epoch_unix}
