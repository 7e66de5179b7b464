"""API keys on a real store: shown once, kept hashed, listed without secrets, revoked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spotinference.errors import InputError
from spotinference.keys import KEY_PREFIX, KeyRing, create_key, hash_key, list_keys, revoke_key
from spotinference.store import Store


def test_a_key_is_stored_only_as_its_hash(home: Path) -> None:
    store = Store(home)
    new = create_key(store, "alice")
    assert new.key.startswith(KEY_PREFIX) and len(new.key) > len(KEY_PREFIX) + 40
    with store.reading() as con:
        stored = con.execute("SELECT * FROM api_keys").fetchall()
    assert new.key not in repr(stored)
    assert hash_key(new.key) in repr(stored)
    assert new.key.encode() not in store.path.read_bytes()


def test_keyring_accepts_live_keys_and_refuses_revoked_and_unknown(home: Path) -> None:
    store = Store(home)
    alice, bob = create_key(store, "alice"), create_key(store, "bob")
    ring = KeyRing(store)
    assert ring.key_id_for(alice.key) == alice.key_id
    assert ring.key_id_for(bob.key) == bob.key_id
    assert ring.key_id_for(alice.key + "x") is None
    assert ring.key_id_for("") is None
    revoke_key(store, "alice")
    assert ring.refresh() is True  # the version file changed
    assert ring.key_id_for(alice.key) is None
    assert ring.key_id_for(bob.key) == bob.key_id
    assert ring.refresh() is False  # nothing changed since


def test_duplicate_and_bad_names_and_unknown_revocations_are_clear_errors(home: Path) -> None:
    store = Store(home)
    create_key(store, "alice")
    with pytest.raises(InputError, match="a key named 'alice' already exists"):
        create_key(store, "alice")
    with pytest.raises(InputError, match="key name 'bad name!' is invalid"):
        create_key(store, "bad name!")
    with pytest.raises(InputError, match=r"no key named 'carol' \(known: alice\)"):
        revoke_key(store, "carol")


def test_keys_cli_prints_the_key_once_and_never_again(spot) -> None:
    created = spot("keys", "create", "alice", "--json")
    assert created.returncode == 0
    key = json.loads(created.stdout)["key"]
    assert json.loads(created.stdout)["name"] == "alice"
    listed = spot("keys", "list", "--json")
    assert key not in listed.stdout
    rows = json.loads(listed.stdout)
    assert [r["name"] for r in rows] == ["alice"] and rows[0]["revoked_at"] is None
    assert rows[0]["last_used_at"] is None
    table = spot("keys", "list")
    assert "alice" in table.stdout and "never" in table.stdout and key not in table.stdout
    revoked = spot("keys", "revoke", "alice")
    assert revoked.returncode == 0
    assert json.loads(spot("keys", "list", "--json").stdout)[0]["revoked_at"] is not None
    missing = spot("keys", "revoke", "nobody")
    assert missing.returncode == 2 and missing.stderr.startswith("error: no key named 'nobody'")


def test_list_keys_shows_last_use_from_the_request_log(home: Path) -> None:
    from tests.workers.store_load import request_row

    store = Store(home)
    new = create_key(store, "alice")
    with store.spool_writer("requests") as writer:
        writer.append({**request_row("r-1"), "key_id": new.key_id})
    (info,) = list_keys(store)
    assert info.last_used_at is not None
