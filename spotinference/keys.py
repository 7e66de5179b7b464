"""Client API keys: created once and shown once, stored only as a hash, revoked by name.

A key looks like ``sk-spot-<43 url-safe characters>`` (256 random bits). The database keeps its
SHA-256; a gateway holds the set of live hashes (``KeyRing``) and notices changes through a
version file that every create or revoke touches, so revocation reaches a running gateway within
a fraction of a second without it polling the database.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from .errors import InputError
from .store import Store

KEY_PREFIX = "sk-spot-"
VERSION_FILE = "keys.version"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


@dataclass(frozen=True)
class KeyInfo:
    name: str
    key_id: str
    key_prefix: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None = None


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


def create_key(store: Store, name: str) -> NewKey:
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
        con.execute(
            "INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, NULL)",
            [name, key_id, key[: len(KEY_PREFIX) + 4], hash_key(key), datetime.now(UTC)],
        )
    _touch_version(store)
    return NewKey(name, key_id, key)


def revoke_key(store: Store, name: str) -> KeyInfo:
    with store.transaction() as con:
        row = con.execute("SELECT revoked_at FROM api_keys WHERE name = ?", [name]).fetchone()
        if row is None:
            names = [r[0] for r in con.execute("SELECT name FROM api_keys ORDER BY name").fetchall()]
            raise InputError(f"no key named {name!r} (known: {', '.join(names) or 'none'})")
        if row[0] is None:
            con.execute("UPDATE api_keys SET revoked_at = ? WHERE name = ?", [datetime.now(UTC), name])
    _touch_version(store)
    return next(k for k in list_keys(store) if k.name == name)


def list_keys(store: Store) -> list[KeyInfo]:
    store.flush()  # last use comes from the request log
    with store.reading() as con:
        rows = con.execute(
            "SELECT k.name, k.key_id, k.key_prefix, k.created_at, k.revoked_at, "
            "(SELECT max(r.finished_at) FROM requests r WHERE r.key_id = k.key_id) "
            "FROM api_keys k ORDER BY k.created_at"
        ).fetchall()
    return [KeyInfo(*row) for row in rows]


def live_key_hashes(store: Store) -> dict[str, str]:
    """sha256 → key_id for every key that is not revoked."""
    with store.reading() as con:
        rows = con.execute("SELECT key_sha256, key_id FROM api_keys WHERE revoked_at IS NULL").fetchall()
    return dict(rows)


class KeyRing:
    """The gateway's view of live keys, reloaded when the version file changes."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._version_path = store.home / VERSION_FILE
        self._seen_version: int | None = None
        self._hashes: dict[str, str] = {}
        self.refresh(force=True)

    def refresh(self, *, force: bool = False) -> bool:
        try:
            version = self._version_path.stat().st_mtime_ns
        except FileNotFoundError:
            version = 0
        if not force and version == self._seen_version:
            return False
        self._hashes = live_key_hashes(self.store)
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
