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


# -- per-key settings (issue 23) -------------------------------------------------------------------

def test_settings_are_stored_with_the_key_listed_and_updated_from_the_cli(spot) -> None:
    created = spot("keys", "create", "acme", "--daily-usd", "5", "--monthly-usd", "100.25", "--rpm", "60",
                   "--tpm", "20000", "--max-concurrent", "4", "--models", "tiny-chat, big-chat", "--expires",
                   "2027-01-31", "--json")
    assert created.returncode == 0, created.stderr
    expected = {"daily_usd": 5.0, "monthly_usd": 100.25, "rpm": 60, "tpm": 20000, "max_concurrent": 4,
                "models": ["big-chat", "tiny-chat"], "expires_at": "2027-02-01T00:00:00+00:00"}
    assert json.loads(created.stdout)["settings"] == expected
    # Budgets are enforced now (test_gateway_key_budgets.py): no note that they are not.
    assert "not enforce" not in created.stderr
    (listed,) = json.loads(spot("keys", "list", "--json").stdout)
    assert listed["settings"] == expected and listed["expired"] is False
    updated = spot("keys", "update", "acme", "--rpm", "120", "--clear", "models,daily-usd", "--clear", "expires",
                   "--json")
    assert updated.returncode == 0, updated.stderr
    after = {**expected, "rpm": 120, "models": None, "daily_usd": None, "expires_at": None}
    assert json.loads(updated.stdout) == {"name": "acme", "settings": after}
    assert json.loads(spot("keys", "list", "--json").stdout)[0]["settings"] == after
    table = spot("keys", "list", env={"COLUMNS": "200"})
    assert "$100.25/month · 120 rpm · 20,000 tpm · 4 at once" in table.stdout
    ended = spot("keys", "update", "acme", "--expires", "2026-01-01T12:00")  # a past date ends the key now
    assert ended.returncode == 0 and "expires 2026-01-01 12:00:00" in ended.stdout
    assert "expired 2026-01-01 12:00:00" in spot("keys", "list", env={"COLUMNS": "200"}).stdout
    assert json.loads(spot("keys", "list", "--json").stdout)[0]["expired"] is True


@pytest.mark.parametrize(("args", "message"), [
    (["--daily-usd", "0"], "--daily-usd '0' is invalid: expected dollars above 0"),
    (["--monthly-usd", "ten"], "--monthly-usd 'ten' is invalid: expected dollars above 0"),
    (["--daily-usd", "0.0000001"], "--daily-usd '0.0000001' is invalid: expected dollars above 0 with at most 6"),
    (["--daily-usd", "nan"], "--daily-usd 'nan' is invalid"),
    (["--rpm", "1.5"], "--rpm '1.5' is invalid: expected a whole number of requests per minute from 1"),
    (["--tpm", "0"], "--tpm '0' is invalid: expected a whole number of tokens per minute from 1"),
    (["--max-concurrent", "-3"], "--max-concurrent '-3' is invalid: expected a whole number of requests at once"),
    (["--models", ""], "--models '' is invalid: expected model names separated by commas"),
    (["--models", "a,,b"], "--models 'a,,b' is invalid"),
    (["--expires", "31/01/2027"], "--expires '31/01/2027' is invalid: expected a date YYYY-MM-DD"),
    (["--expires", "2027-02-30"], "--expires '2027-02-30' is invalid"),
    (["--expires", "2020-01-01"], "--expires '2020-01-01' is already past"),
])
def test_bad_settings_are_one_line_errors_and_create_nothing(spot, args: list[str], message: str) -> None:
    result = spot("keys", "create", "acme", *args)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {message}") and len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""
    assert json.loads(spot("keys", "list", "--json").stdout) == []


@pytest.mark.parametrize(("args", "message"), [
    (["--clear", "rpm,colour"], "--clear 'colour' is invalid: expected one or more of daily-usd, monthly-usd"),
    (["--rpm", "5", "--clear", "rpm"], "--rpm is both set and cleared"),
    ([], "nothing to update"),
    (["--rpm", "x"], "--rpm 'x' is invalid"),
])
def test_bad_updates_are_one_line_errors_and_change_nothing(spot, args: list[str], message: str) -> None:
    assert spot("keys", "create", "acme", "--rpm", "60").returncode == 0
    result = spot("keys", "update", "acme", *args)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {message}") and len(result.stderr.strip().splitlines()) == 1
    assert json.loads(spot("keys", "list", "--json").stdout)[0]["settings"]["rpm"] == 60


def test_updating_an_unknown_or_revoked_key_is_refused(spot) -> None:
    assert spot("keys", "create", "gone").returncode == 0
    assert spot("keys", "revoke", "gone").returncode == 0
    revoked = spot("keys", "update", "gone", "--rpm", "5")
    assert revoked.returncode == 2 and revoked.stderr.startswith("error: key 'gone' is revoked")
    unknown = spot("keys", "update", "nobody", "--rpm", "5")
    assert unknown.returncode == 2 and unknown.stderr.startswith("error: no key named 'nobody' (known: gone)")


def test_the_keyring_reloads_settings_with_the_version_file(home: Path) -> None:
    from spotinference.key_settings import KeySettings
    from spotinference.keys import update_key

    store = Store(home)
    plain = create_key(store, "plain")
    narrow = create_key(store, "narrow", KeySettings(models=("tiny-chat",), rpm=10))
    ring = KeyRing(store)
    assert plain.key_id not in ring.settings  # no settings: nothing to check per request
    assert ring.settings[narrow.key_id].allows("tiny-chat") and not ring.settings[narrow.key_id].allows("other")
    update_key(store, "narrow", {"models": ("other",)}, {"rpm"})
    assert ring.refresh() is True
    assert ring.settings[narrow.key_id].allows("other") and ring.settings[narrow.key_id].rpm is None
    update_key(store, "narrow", {}, {"models"})
    assert ring.refresh() is True and narrow.key_id not in ring.settings  # nothing left to check


def test_list_shows_each_keys_tokens_today_and_this_month(home: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from tests.workers.store_load import request_row

    store = Store(home)
    alice, bob = create_key(store, "alice"), create_key(store, "bob")
    now = datetime(2026, 12, 5, 15, 0, tzinfo=UTC)  # the month began 4 days and 15 hours ago
    rows = [(alice, now - timedelta(hours=1), 10, 5), (alice, now - timedelta(days=2), 100, 50),
            (alice, now - timedelta(days=10), 1000, 500), (bob, now - timedelta(minutes=5), 7, None),
            (bob, now - timedelta(hours=5), 2, 1), (bob, now - timedelta(days=6), 40, 2)]  # 29 November: last month
    with store.spool_writer("requests") as writer:
        for i, (key, at, prompt, completion) in enumerate(rows):
            writer.append({**request_row(f"r-{i}"), "key_id": key.key_id, "started_at": at, "finished_at": at,
                           "prompt_tokens": prompt, "completion_tokens": completion})
    listed = {k.name: (k.tokens_today, k.tokens_this_month) for k in list_keys(store, now=now)}
    assert listed == {"alice": (15, 165), "bob": (10, 10)}
    # Days start at midnight in the budget's time zone: in Auckland (UTC+13) the day began at
    # 11:00 UTC, after bob's 10:00 request.
    auckland = {k.name: k.tokens_today for k in list_keys(store, timezone="Pacific/Auckland", now=now)}
    assert auckland == {"alice": 15, "bob": 7}
