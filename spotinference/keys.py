"""Client API keys: created once and shown once, stored only as a hash, revoked by name.

A key looks like ``sk-spot-<43 url-safe characters>`` (256 random bits). The database keeps its
SHA-256; a gateway holds the set of live hashes (``KeyRing``) and notices changes through a
version file that every create or revoke touches, so revocation reaches a running gateway within
a fraction of a second without it polling the database. A key's settings (``key_settings.py``:
budgets, limits, models, expiry) travel the same way: an update touches the version file and the
ring reloads them with the hashes.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, time as dtime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from .errors import InputError
from .key_settings import FLAGS, KeySettings, settings_from_row
from .reports import query_text
from .store import Store

KEY_PREFIX = "sk-spot-"
VERSION_FILE = "keys.version"
# On a lake store a key may be created or revoked on another host, whose version file this host
# never sees: the ring reads the lake's keys this often instead (one small query per gateway).
LAKE_KEYS_POLL_S = 2.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


@dataclass(frozen=True)
class KeyInfo:
    name: str
    key_id: str
    key_prefix: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None = None
    settings: KeySettings = KeySettings()
    tokens_today: int = 0  # prompt + completion tokens logged today (budget.timezone)
    tokens_this_month: int = 0
    # The key's statement so far today and this month (queries/spend_by_key.sql), what its budgets count.
    spend_today_usd: Decimal = Decimal(0)
    spend_this_month_usd: Decimal = Decimal(0)


@dataclass(frozen=True)
class NewKey:
    name: str
    key_id: str
    key: str  # shown to the operator once, never stored


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _touch_version(store: Store) -> None:
    path = store.home / VERSION_FILE
    path.write_text(datetime.now(UTC).isoformat())


_SETTING_COLUMNS = ", ".join(FLAGS)


def create_key(store: Store, name: str, settings: KeySettings | None = None) -> NewKey:
    if not _NAME.match(name):
        raise InputError(
            f"key name {name!r} is invalid: expected 1-64 letters, digits or ._@- , starting with a letter or digit"
        )
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    key_id = "key_" + secrets.token_hex(6)
    with store.transaction() as con:
        exists = con.execute("SELECT revoked_at FROM api_keys WHERE name = ?", [name]).fetchone()
        if exists is not None:
            state = "revoked" if exists[0] else "active"
            raise InputError(f"a key named {name!r} already exists ({state})", hint="choose another name")
        values = settings or KeySettings()
        con.execute(
            f"INSERT INTO api_keys (name, key_id, key_prefix, key_sha256, created_at, {_SETTING_COLUMNS}) "
            f"VALUES (?, ?, ?, ?, ?{', ?' * len(FLAGS)})",
            [name, key_id, key[: len(KEY_PREFIX) + 4], hash_key(key), datetime.now(UTC),
             *_columns(values)],
        )
    _touch_version(store)
    return NewKey(name, key_id, key)


def _columns(settings: KeySettings) -> list[Any]:
    return [list(v) if isinstance(v, tuple) else v for v in (getattr(settings, name) for name in FLAGS)]


def _known(con: Any, name: str, columns: str = "revoked_at") -> tuple[Any, ...]:
    row = con.execute(f"SELECT {columns} FROM api_keys WHERE name = ?", [name]).fetchone()
    if row is None:
        names = [r[0] for r in con.execute("SELECT name FROM api_keys ORDER BY name").fetchall()]
        raise InputError(f"no key named {name!r} (known: {', '.join(names) or 'none'})")
    return row


def update_key(store: Store, name: str, values: dict[str, Any], clear: set[str]) -> KeyInfo:
    """Set ``values`` (parsed by ``key_settings.parse_settings``) and clear the settings named in
    ``clear``; a running gateway applies them within a second."""
    both = sorted(set(values) & clear)
    if both:
        raise InputError(f"{FLAGS[both[0]]} is both set and cleared: give one of them")
    if not values and not clear:
        raise InputError("nothing to update: give a setting (e.g. --rpm 60) or --clear NAME "
                         "(see spot keys update --help)")
    with store.transaction() as con:
        row = _known(con, name, f"revoked_at, {_SETTING_COLUMNS}")
        if row[0] is not None:
            raise InputError(f"key {name!r} is revoked: its settings no longer matter", hint="create a new key")
        settings = settings_from_row(row[1:]).changed(values, clear)
        con.execute(f"UPDATE api_keys SET {', '.join(f'{c} = ?' for c in FLAGS)} WHERE name = ?",
                    [*_columns(settings), name])
    _touch_version(store)
    return next(k for k in list_keys(store) if k.name == name)


def revoke_key(store: Store, name: str) -> KeyInfo:
    with store.transaction() as con:
        row = _known(con, name)
        if row[0] is None:
            con.execute("UPDATE api_keys SET revoked_at = ? WHERE name = ?", [datetime.now(UTC), name])
    _touch_version(store)
    return next(k for k in list_keys(store) if k.name == name)


def list_keys(store: Store, *, timezone: str = "UTC", now: datetime | None = None) -> list[KeyInfo]:
    """Every key with its settings, its tokens today and this month, and its statement for each
    (what its budgets count; days and months start at midnight in ``timezone``, the budget's)."""
    store.flush()  # last use and usage come from the request log
    now = now or datetime.now(UTC)
    local = now.astimezone(ZoneInfo(timezone))
    day_start = datetime.combine(local.date(), dtime(0), tzinfo=local.tzinfo)
    month_start = day_start.replace(day=1)
    with store.reading() as con:
        rows = con.execute(
            "WITH used AS (SELECT key_id, max(finished_at) AS last_used, "
            "  sum(coalesce(prompt_tokens, 0) + coalesce(completion_tokens, 0)) "
            "    FILTER (WHERE finished_at >= ?) AS today, "
            "  sum(coalesce(prompt_tokens, 0) + coalesce(completion_tokens, 0)) "
            "    FILTER (WHERE finished_at >= ?) AS month "
            "  FROM requests WHERE key_id IS NOT NULL GROUP BY key_id) "
            "SELECT k.name, k.key_id, k.key_prefix, k.created_at, k.revoked_at, u.last_used, "
            f"coalesce(u.today, 0), coalesce(u.month, 0), {', '.join(f'k.{c}' for c in FLAGS)} "
            "FROM api_keys k LEFT JOIN used u USING (key_id) ORDER BY k.created_at",
            [day_start, month_start],
        ).fetchall()
        spend = [{row[0]: row[6] for row in con.execute(query_text("spend_by_key"),
                                                        {"window_start": start, "window_end": now}).fetchall()}
                 for start in (day_start, month_start)]
    return [KeyInfo(*row[:6], settings=settings_from_row(row[8:]), tokens_today=int(row[6]),
                    tokens_this_month=int(row[7]), spend_today_usd=Decimal(spend[0].get(row[1], 0)),
                    spend_this_month_usd=Decimal(spend[1].get(row[1], 0))) for row in rows]


def live_keys(store: Store) -> tuple[dict[str, str], dict[str, KeySettings]]:
    """sha256 → key_id for every key that is not revoked, and the settings of those that have any."""
    with store.reading() as con:
        rows = con.execute(
            f"SELECT key_sha256, key_id, {_SETTING_COLUMNS} FROM api_keys WHERE revoked_at IS NULL"
        ).fetchall()
    settings = {row[1]: settings_from_row(row[2:]) for row in rows}
    return {row[0]: row[1] for row in rows}, {k: v for k, v in settings.items() if not v.is_empty()}


class KeyRing:
    """The gateway's view of live keys, reloaded when the version file changes (and, on a lake
    store, every LAKE_KEYS_POLL_S, for the keys other hosts change)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._version_path = store.home / VERSION_FILE
        self._seen_version: int | None = None
        self._loaded_at = 0.0
        self._hashes: dict[str, str] = {}
        # key_id → settings, for the keys that have any: a key without is one failed dict lookup.
        self.settings: dict[str, KeySettings] = {}
        self.refresh(force=True)

    def refresh(self, *, force: bool = False) -> bool:
        try:
            version = self._version_path.stat().st_mtime_ns
        except FileNotFoundError:
            version = 0
        polled = self.store.lake is not None and time.monotonic() - self._loaded_at >= LAKE_KEYS_POLL_S
        if not force and not polled and version == self._seen_version:
            return False
        self._loaded_at = time.monotonic()
        hashes, settings = live_keys(self.store)
        if not force and polled and version == self._seen_version and hashes == self._hashes \
                and settings == self.settings:
            return False  # nothing changed on any host
        # Settings first (this runs in a thread beside the serving loop): a new key is never
        # accepted before its limits are in place.
        self.settings = settings
        self._hashes = hashes
        self._seen_version = version
        return True

    def key_id_for(self, presented: str) -> str | None:
        """The key id if ``presented`` is a live key, else None. Constant-time in the key."""
        digest = hash_key(presented)
        found = None
        for stored, key_id in self._hashes.items():  # every entry, so timing says nothing
            if hmac.compare_digest(stored, digest):
                found = key_id
        return found

    def __len__(self) -> int:
        return len(self._hashes)
