"""`spot cost --by key` beside each key's statement (issue 23, item 5): its budgets, the budget
reservations released, and the requests each of its own limits refused, from a real `spot serve` in
front of `spot sim engine` on a real DuckDB ledger priced at $1 per million tokens (1 micro-dollar a
token, so a reservation's micro-dollars are its worst-case tokens and a settlement's its tokens).
The statement itself stays the bill × token share: its sum is the window's spend.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest

from spotinference.costs.report import KEY_LIMIT_FIELDS
from spotinference.gateway.key_refusals import REFUSALS
from spotinference.key_settings import KeySettings
from spotinference.keys import create_key
from spotinference.reports import run_query
from spotinference.store import Store
from tests.budget_zone import zone_well_into_a_day
from tests.servers import start_gateway, start_sim_engine
from tests.test_cost_queries import Seed

MODEL = "tiny-chat"
SLOW = "slow-chat"  # streams a token every 300 ms: a stream stays in flight while others are tried
TIER = f"static:{MODEL}"
BODY = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}).encode()
BIG_BODY = BODY.replace(b'"max_tokens": 20', b'"max_tokens": 1000')  # worst case over $0.0005
SLOW_BODY = BODY.replace(MODEL.encode(), SLOW.encode())
STREAM_BODY = json.dumps({"model": SLOW, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 400,
                          "stream": True}).encode()


@dataclass
class Stack:
    home: Path
    url: str = ""
    keys: dict[str, str] = field(default_factory=dict)  # name → key
    key_ids: dict[str, str] = field(default_factory=dict)
    answers: dict[str, list[int]] = field(default_factory=dict)  # name → the HTTP statuses it got


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


def cost_json(spot, home: Path) -> dict:
    result = spot("cost", "--days", "1", "--by", "key", "--json", env={"SPOT_HOME": str(home)})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def ledger_rows(home: Path, key_id: str) -> list[dict]:
    with Store(home).reading() as con:
        cursor = con.execute("SELECT http_status, prompt_tokens, completion_tokens, client_aborted, "
                             "CAST(extra AS VARCHAR) FROM requests WHERE key_id = ? ORDER BY started_at", [key_id])
        return [{"status": s, "tokens": (p or 0) + (c or 0), "completion": c, "aborted": a,
                 "extra": json.loads(e) if e else {}} for s, p, c, a, e in cursor.fetchall()]


@pytest.fixture(scope="module")
def stack(sim_engine: str, tmp_path_factory: pytest.TempPathFactory):
    now = datetime.now(UTC)
    home = tmp_path_factory.mktemp("cost-by-key")
    store = Store(home)
    store.migrate()
    settings = {
        "customer": KeySettings(daily_usd=Decimal("0.0005"), monthly_usd=Decimal("1"), rpm=3, models=(MODEL,)),
        "tokens": KeySettings(tpm=1),
        "streamer": KeySettings(daily_usd=Decimal("1"), max_concurrent=1),
        "lapsed": KeySettings(expires_at=now - timedelta(hours=1)),
        "plain": KeySettings(),
    }
    stack = Stack(home)
    for name, s in settings.items():
        new = create_key(store, name, s)
        stack.keys[name], stack.key_ids[name] = new.key, new.key_id
    # $1 for 1,000,000 tokens between two samples in the last 20 minutes: $1 per million tokens.
    seed = Seed(store)
    for t, total in ((now - timedelta(minutes=20), "0"), (now - timedelta(minutes=1), "1")):
        seed.sample(seed.run(t), t, "vm-1", total, tier=TIER)
    seed.request(now - timedelta(minutes=10), 900_000, 100_000, key="warm-up", tier=TIER)
    seed.write()
    engine, slow_url = start_sim_engine(tmp_path_factory.mktemp("slow-engine"), model=SLOW,
                                        extra=["--itl-ms", "300", "--reply-tokens-min", "400", "--reply-tokens-max", "400"])
    try:
        # The budgets' day (its price is the day's) must be 30 minutes old: a zone where it is.
        zone = zone_well_into_a_day(now, since_midnight=timedelta(minutes=30))
        gateway, stack.url = start_gateway(home, {MODEL: sim_engine, SLOW: slow_url},
                                           extra_env={"SPOT_BUDGET__TIMEZONE": zone})
        try:
            run_scenario(stack)
        finally:
            gateway.stop()
    finally:
        engine.stop()
    # The bill after the requests: the window holds them all (spend $1.001).
    later = datetime.now(UTC)
    final = Seed(store)
    final.sample(final.run(later), later, "vm-1", "1.001", tier=TIER)
    final.write()
    time.sleep(2)  # the sampler's run ends a second after its sample: inside a window ending now
    return stack


def run_scenario(stack: Stack) -> None:
    def ask(name: str, body: bytes = BODY) -> int:
        status = httpx.post(f"{stack.url}/v1/chat/completions", content=body, headers=bearer(stack.keys[name]),
                            timeout=60).status_code
        stack.answers.setdefault(name, []).append(status)
        return status

    # customer: three served, one over its daily budget, one past its rpm of 3, one model it may not use.
    assert [ask("customer") for _ in range(3)] == [200, 200, 200]
    assert ask("customer", BIG_BODY) == 429  # its worst case alone is over $0.0005
    assert ask("customer") == 429  # the fourth request in the minute
    assert ask("customer", SLOW_BODY) == 404
    # tokens: the first request takes more than its 1 token a minute, the second is refused.
    assert [ask("tokens"), ask("tokens")] == [200, 429]
    # streamer: one stream in flight, a second request past max_concurrent=1, then the stream is
    # left after a few tokens (aborted: it settles the tokens counted so far).
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", f"{stack.url}/v1/chat/completions", content=STREAM_BODY,
                           headers=bearer(stack.keys["streamer"])) as stream:
            assert stream.status_code == 200
            tokens = (line for line in stream.iter_lines() if '"content"' in line)
            for _ in range(3):
                next(tokens)
            assert ask("streamer") == 429
    # lapsed: expired an hour ago, refused by the official SDK's request as 401 key_expired.
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=stack.keys["lapsed"], max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    assert refused.value.code == "key_expired"
    assert ask("plain") == 200
    # The rows reach the ledger through the spool; the report flushes it. Wait for the aborted
    # stream's row, which is written when the gateway notices the client left.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        Store(stack.home).flush()
        if len(ledger_rows(stack.home, stack.key_ids["streamer"])) == 2:
            break
        time.sleep(0.2)


def by_key(data: dict) -> dict[str, dict]:
    return {row["key_name"]: row for row in data["rows"] if row["key_name"]}


def test_refusals_are_counted_per_limit_and_the_budgets_shown(spot, stack: Stack) -> None:
    rows = by_key(cost_json(spot, stack.home))
    refused = {name: {limit: rows[name][f"refused_{limit}"] for limit in REFUSALS} for name in stack.keys}
    none = dict.fromkeys(REFUSALS, 0)
    assert refused == {
        "customer": {**none, "rpm": 1, "budget": 1, "model_not_allowed": 1},
        "tokens": {**none, "tpm": 1},
        "streamer": {**none, "concurrency": 1},
        "lapsed": {**none, "expired": 1},
        "plain": none,
    }
    assert Decimal(str(rows["customer"]["daily_budget_usd"])) == Decimal("0.0005")
    assert Decimal(str(rows["customer"]["monthly_budget_usd"])) == Decimal("1")
    assert rows["plain"]["daily_budget_usd"] is None and rows["plain"]["monthly_budget_usd"] is None
    assert rows["customer"]["requests"] == 6 and rows["lapsed"]["requests"] == 1
    # --csv carries the same fields under the same names.
    result = spot("cost", "--days", "1", "--by", "key", "--csv", env={"SPOT_HOME": str(stack.home)})
    table = {row["key_id"]: row for row in csv.DictReader(io.StringIO(result.stdout))}
    assert set(KEY_LIMIT_FIELDS) <= set(table[stack.key_ids["customer"]])
    customer = table[stack.key_ids["customer"]]
    assert customer["refused_budget"] == "1" and Decimal(customer["daily_budget_usd"]) == Decimal("0.0005")


def test_the_statement_still_sums_to_the_windows_spend(spot, stack: Stack) -> None:
    data = cost_json(spot, stack.home)
    assert data["observable"] is True
    assert sum(Decimal(str(r["statement_usd"])) for r in data["rows"]) == Decimal(str(data["spend_usd"])) \
        == Decimal("1.001")
    # The same figures as the pass-through statement's own query over the same interval.
    start = datetime.fromisoformat(data["billed_from"]) + timedelta(microseconds=1)
    end = datetime.fromisoformat(data["billed_until"]) + timedelta(microseconds=1)
    plain = run_query(Store(stack.home), "spend_by_key", window_start=start, window_end=end).records()
    assert [(r["key_id"], r["statement_usd"]) for r in plain] == \
        [(r["key_id"], Decimal(str(r["statement_usd"]))) for r in data["rows"]]


def test_released_is_reserved_minus_settled_for_finished_and_aborted_requests(spot, stack: Stack) -> None:
    rows = by_key(cost_json(spot, stack.home))
    for name in ("customer", "streamer"):
        ledger = [r for r in ledger_rows(stack.home, stack.key_ids[name]) if "reserved_micro" in r["extra"]]
        # At 1 micro-dollar a token: a request settles at its tokens, and reserved its worst case.
        for row in ledger:
            assert row["extra"]["settled_micro"] == row["tokens"]
            assert row["extra"]["reserved_micro"] > row["extra"]["settled_micro"]
        released = sum(r["extra"]["reserved_micro"] - r["extra"]["settled_micro"] for r in ledger)
        assert Decimal(str(rows[name]["reservations_released_usd"])) == Decimal(released) / 1_000_000
        if name == "customer":  # the three served: bytes + max_tokens each
            assert [r["extra"]["reserved_micro"] for r in ledger] == [len(BODY) + 20] * 3
        else:  # the stream the client left after a few tokens
            (aborted,) = ledger
            assert aborted["aborted"] and aborted["completion"] > 0
            assert len(STREAM_BODY) + 400 <= aborted["extra"]["reserved_micro"] <= len(STREAM_BODY) + 400 + 100
    # Keys without a budget reserve nothing: blank, not $0.
    assert rows["tokens"]["reservations_released_usd"] is None and rows["plain"]["reservations_released_usd"] is None


def by_key_table(spot, stack: Stack, columns: int) -> tuple[list[str], str, dict[str, str]]:
    """The `by key` table at this width: its column titles, its caption, and each key's row as words."""
    result = spot("cost", "--days", "1", "--by", "key", env={"SPOT_HOME": str(stack.home), "COLUMNS": str(columns)})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("by key", 1)[1].split("hosted APIs", 1)[0].splitlines()[1:]
    assert max(len(line) for line in lines) <= columns
    rule = next(i for i, line in enumerate(lines) if line.startswith("━"))
    columns_of = [[c.strip() for c in line.split("┃")] for line in lines[:rule]]
    header = [" ".join(filter(None, words)) for words in zip(*columns_of)]  # a title may wrap
    rows: dict[str, str] = {}
    name = ""
    caption = []
    for line in lines[rule + 1:]:
        if "│" not in line:
            caption.append(line.strip())
            continue
        cells = [c.strip() for c in line.split("│")]
        name = cells[0] or name  # a folded cell continues on the next line
        rows[name] = " ".join(filter(None, [rows.get(name, ""), *cells[1:]]))
    return header, " ".join(caption), rows


def test_the_table_at_80_and_160_columns(spot, stack: Stack) -> None:
    header, caption, rows = by_key_table(spot, stack, 160)
    assert header == ["key", "key id", "requests", "prompt tokens", "output tokens", "share of tokens", "statement",
                      "daily budget", "monthly budget", "reservations released", "refused (by limit)"]
    assert caption == ""
    assert "$0.0005 $1.00" in rows["customer"] and "rpm 1, budget 1, model not allowed 1" in rows["customer"]
    assert rows["tokens"].endswith("tpm 1") and rows["lapsed"].endswith("expired 1")
    assert rows["streamer"].endswith("concurrency 1") and "$1.00" in rows["streamer"]
    header, caption, rows = by_key_table(spot, stack, 80)
    # The statement, the budgets, the releases and the refusals stay; the token detail goes first.
    assert header == ["key", "statement", "daily budget", "monthly budget", "reservations released", "refused (by limit)"]
    assert caption.startswith("not shown at this width: key id, prompt tokens, output tokens, share of tokens")
    assert "rpm 1, budget 1, model not allowed 1" in rows["customer"] and rows["lapsed"].endswith("expired 1")


def test_a_refusal_for_an_unknown_price_is_on_the_statement(spot, tmp_path: Path, sim_engine: str) -> None:
    store = Store(tmp_path)
    store.migrate()
    new = create_key(store, "early", KeySettings(daily_usd=Decimal("5")))
    gateway, url = start_gateway(tmp_path, {MODEL: sim_engine})
    try:
        answer = httpx.post(f"{url}/v1/chat/completions", content=BODY, headers=bearer(new.key), timeout=30)
    finally:
        gateway.stop()
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "price_unknown"
    data = cost_json(spot, tmp_path)
    assert data["observable"] is False  # no bill yet: the statement is unknown, the refusal is not
    (row,) = data["rows"]
    assert (row["key_name"], row["statement_usd"], row["refused_price_unknown"]) == ("early", None, 1)
    assert row["daily_budget_usd"] is not None and Decimal(str(row["daily_budget_usd"])) == Decimal("5")


def test_the_report_and_the_gateway_name_the_same_limits() -> None:
    assert [f for f in KEY_LIMIT_FIELDS if f.startswith("refused_")] == [f"refused_{r}" for r in REFUSALS]
