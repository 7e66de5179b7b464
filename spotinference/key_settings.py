"""A key's settings as a customer account: budgets, rate limits, a models allowlist, an expiry.

Every setting is optional (None: no limit). The operator gives them as text (``spot keys create``
/ ``update`` flags); ``parse_settings`` checks each and says in one line what was wrong and what
is expected. The gateway reads them from the key ring once per request (``allows``/``expired``
are a set lookup and a float compare, on the hot path).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, time as dtime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from .errors import InputError

#: the flag each setting is given by, in the order they are shown
FLAGS = {
    "daily_usd": "--daily-usd",
    "monthly_usd": "--monthly-usd",
    "rpm": "--rpm",
    "tpm": "--tpm",
    "max_concurrent": "--max-concurrent",
    "models": "--models",
    "expires_at": "--expires",
}
#: what ``--clear`` accepts: the flag without its dashes
CLEAR_NAMES = {flag.removeprefix("--"): name for name, flag in FLAGS.items()}

_MAX_USD = Decimal("999999999999")  # DECIMAL(18, 6)
_INT_RANGES = {"rpm": (1, 10**9, "requests per minute"), "tpm": (1, 10**15, "tokens per minute"),
               "max_concurrent": (1, 10**6, "requests at once")}
_MODEL = re.compile(r"^[^\s,]{1,256}$")


@dataclass(frozen=True)
class KeySettings:
    daily_usd: Decimal | None = None
    monthly_usd: Decimal | None = None
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    models: tuple[str, ...] | None = None  # None: every model the gateway serves
    expires_at: datetime | None = None  # the first instant the key no longer works
    # Derived once, for the gateway's per-request checks.
    _allowed: frozenset[str] | None = field(default=None, init=False, repr=False, compare=False)
    _expires_unix: float | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_allowed", None if self.models is None else frozenset(self.models))
        object.__setattr__(self, "_expires_unix", None if self.expires_at is None else self.expires_at.timestamp())

    def is_empty(self) -> bool:
        return all(getattr(self, name) is None for name in FLAGS)

    def allows(self, model: str) -> bool:
        return self._allowed is None or model in self._allowed

    def expired(self, now_unix: float | None = None) -> bool:
        return self._expires_unix is not None and (time.time() if now_unix is None else now_unix) >= self._expires_unix

    def to_dict(self) -> dict[str, Any]:
        return {name: (list(value) if isinstance(value, tuple) else value)
                for name in FLAGS for value in [getattr(self, name)]}

    def changed(self, values: dict[str, Any], clear: set[str]) -> KeySettings:
        return replace(self, **values, **{name: None for name in clear})


def settings_from_row(row: tuple[Any, ...]) -> KeySettings:
    """From the api_keys columns daily_usd … expires_at, in FLAGS order."""
    values = dict(zip(FLAGS, row, strict=True))
    if values["models"] is not None:
        values["models"] = tuple(values["models"])
    for name in ("rpm", "tpm", "max_concurrent"):
        if values[name] is not None:
            values[name] = int(values[name])
    if values["expires_at"] is not None:
        values["expires_at"] = values["expires_at"].astimezone(UTC)
    return KeySettings(**values)


def parse_settings(given: dict[str, str | None], *, now: datetime | None = None,
                   allow_past_expiry: bool = False) -> dict[str, Any]:
    """The settings given as text (None: not given), checked; a one-line InputError otherwise."""
    parsed: dict[str, Any] = {}
    for name, text in given.items():
        if text is None:
            continue
        if name not in FLAGS:
            raise InputError(f"unknown key setting {name!r}")
        flag = FLAGS[name]
        text = text.strip()
        if name in ("daily_usd", "monthly_usd"):
            parsed[name] = _usd(flag, text)
        elif name in _INT_RANGES:
            parsed[name] = _whole(flag, text, *_INT_RANGES[name])
        elif name == "models":
            parsed[name] = _models(text)
        else:
            parsed[name] = _expiry(text, now or datetime.now(UTC), allow_past_expiry)
    return parsed


def parse_clear(names: list[str]) -> set[str]:
    """``--clear daily-usd,models`` (repeatable) → the settings' names."""
    cleared: set[str] = set()
    for item in (part.strip() for text in names for part in text.split(",")):
        if item not in CLEAR_NAMES:
            raise InputError(f"--clear {item!r} is invalid: expected one or more of {', '.join(CLEAR_NAMES)}")
        cleared.add(CLEAR_NAMES[item])
    return cleared


def _usd(flag: str, text: str) -> Decimal:
    expected = f"{flag} {text!r} is invalid: expected dollars above 0 with at most 6 decimals, e.g. 25 or 12.50"
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise InputError(expected) from None
    if not value.is_finite() or value <= 0 or value > _MAX_USD or -value.as_tuple().exponent > 6:  # type: ignore[operator]
        raise InputError(expected)
    return value


def _whole(flag: str, text: str, low: int, high: int, unit: str) -> int:
    if not re.fullmatch(r"[0-9]{1,16}", text) or not low <= int(text) <= high:
        raise InputError(f"{flag} {text!r} is invalid: expected a whole number of {unit} from {low} to {high}")
    return int(text)


def _models(text: str) -> tuple[str, ...]:
    names = [part.strip() for part in text.split(",")]
    if not text or any(not _MODEL.match(name) for name in names):
        raise InputError(f"--models {text!r} is invalid: expected model names separated by commas, e.g. "
                         "tiny-chat,llama-70b (to allow every model again: --clear models)")
    return tuple(sorted(set(names)))


def _expiry(text: str, now: datetime, allow_past: bool) -> datetime:
    expected = (f"--expires {text!r} is invalid: expected a date YYYY-MM-DD (the key works through that day, "
                "UTC) or a time YYYY-MM-DDTHH:MM[:SS][+HH:MM]")
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            day = datetime.strptime(text, "%Y-%m-%d").date()
            at = datetime.combine(day + timedelta(days=1), dtime(0), tzinfo=UTC)
        elif re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?([+-]\d{2}:\d{2}|Z)?", text):
            at = datetime.fromisoformat(text)
            at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
        else:
            raise ValueError
    except ValueError:
        raise InputError(expected) from None
    if at <= now and not allow_past:
        raise InputError(f"--expires {text!r} is already past: a new key must work for a while "
                         "(to end a key now: spot keys revoke NAME)")
    return at
