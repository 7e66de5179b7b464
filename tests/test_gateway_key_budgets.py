"""Per-key budgets in invoice-true dollars (issue 23) through a real `spot serve` with two workers
in front of `spot sim engine`, on a real DuckDB ledger whose billing samples and request rows give
the tier a known price ($1 per million tokens): concurrent requests cannot overshoot a budget, a
spent budget answers 429 `key_budget_exhausted` saying when it resets, days and months reset, and a
key with a budget is refused (503 `price_unknown`) while no price is known.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, time as dtime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import anthropic
import httpx
import openai
import pytest

from spotinference.gateway import endpoints
from spotinference.gateway.endpoint_requests import parse_endpoint_request
from spotinference.gateway.key_budgets import DEFAULT_OUTPUT_TOKENS, generates, worst_case_tokens
from spotinference.key_settings import KeySettings
from spotinference.keys import create_key
from spotinference.store import Store
from tests.budget_zone import zone_well_into_a_day
from tests.conftest import SPOT
from tests.servers import clean_env, start_gateway, start_sim_engine
from tests.test_cost_queries import Seed

MODEL = "tiny-chat"
SLOW = "slow-chat"  # an engine that takes 15 s to answer: a burst is all in flight at once
TIER = f"static:{MODEL}"
MAX_TOKENS = 20
BODY = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                   "max_tokens": MAX_TOKENS}).encode()
SLOW_BODY = BODY.replace(MODEL.encode(), SLOW.encode())
WORST_MICRO = len(SLOW_BODY) + MAX_TOKENS  # tokens, at $1 per million tokens: micro-dollars
# A stream's body goes upstream with usage options added (< 100 bytes): two still fit 2.5 worst cases.
STREAM_BODY = json.dumps({"model": SLOW, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 400,
                          "stream": True}).encode()
STREAM_WORST_MICRO = len(STREAM_BODY) + 400


def usd(micro: int) -> Decimal:
    return Decimal(micro) / 1_000_000


@dataclass
class Stack:
    home: Path
    url: str
    engine_url: str
    now: datetime  # when the ledger was seeded
    sample_at: datetime  # its last good billing sample
    keys: dict[str, str] = field(default_factory=dict)  # name → key
    key_ids: dict[str, str] = field(default_factory=dict)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


def ask(stack: Stack, name: str, body: bytes = BODY) -> httpx.Response:
    return httpx.post(f"{stack.url}/v1/chat/completions", content=body, headers=bearer(stack.keys[name]), timeout=60)


# The budget periods' zone: one where today is 10 minutes old and yesterday is this month, now.
ZONE = zone_well_into_a_day(datetime.now(UTC), since_midnight=timedelta(minutes=10), not_the_first=True)


def midnight(now: datetime) -> datetime:
    """The start of ``now``'s day in the budget's zone."""
    local = now.astimezone(ZoneInfo(ZONE))
    return datetime.combine(local.date(), dtime(0), tzinfo=ZoneInfo(ZONE))


def next_month(now: datetime) -> datetime:
    return (midnight(now).replace(day=1) + timedelta(days=32)).replace(day=1)


def assert_exhausted(answer: httpx.Response, period: str, resets: datetime) -> None:
    assert answer.status_code == 429, answer.text
    error = answer.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "key_budget_exhausted"), error
    assert f"{period} budget" in error["message"] and f"resets at {resets.isoformat()}" in error["message"]
    wait = (resets - datetime.now(UTC)).total_seconds()
    assert wait - 60 <= int(answer.headers["retry-after"]) <= wait + 60


def engine_requests(engine_url: str) -> int:
    text = httpx.get(f"{engine_url}/metrics").text
    return int(sum(float(v) for v in re.findall(r'^vllm:request_success_total\{[^}]*\} (\S+)$', text, re.M)))


@pytest.fixture(scope="module")
def stack(sim_engine: str, tmp_path_factory: pytest.TempPathFactory):
    now = datetime.now(UTC)
    today = midnight(now)
    home = tmp_path_factory.mktemp("gateway-key-budgets")
    store = Store(home)
    store.migrate()
    budgets = {
        "burst": KeySettings(daily_usd=usd(WORST_MICRO * 50 + WORST_MICRO // 2)),  # fits 50 worst cases
        "free": KeySettings(),  # no budget: unaffected
        "spent-yesterday": KeySettings(daily_usd=Decimal("0.0005")),
        "spent-this-month": KeySettings(monthly_usd=Decimal("0.0005")),
        "spent-today": KeySettings(daily_usd=Decimal("0.0005")),
        "streams": KeySettings(daily_usd=usd(STREAM_WORST_MICRO * 5 // 2)),  # two worst cases, not three
    }
    stack = Stack(home, "", "", now, now - timedelta(minutes=1))
    for name, settings in budgets.items():
        new = create_key(store, name, settings)
        stack.keys[name], stack.key_ids[name] = new.key, new.key_id
    # The ledger: $1 per million tokens every time. Yesterday: $0.002 for 2,000 tokens, half each
    # for two keys ($0.001 each); today: $1 for 1,000,000 tokens, 1,000 of them one key's.
    seed = Seed(store)
    yesterday = today - timedelta(hours=12)
    for t, total in ((yesterday - timedelta(minutes=1), "0"), (yesterday + timedelta(minutes=1), "0.002"),
                     (today + (now - today) / 3, "0.002"), (stack.sample_at - timedelta(seconds=1), "1.002")):
        seed.sample(seed.run(t), t, "vm-1", total, tier=TIER)
    for name in ("spent-yesterday", "spent-this-month"):
        seed.request(yesterday, 500, 500, key=stack.key_ids[name], tier=TIER)
    during = today + (now - today) / 2
    seed.request(during, 900_000, 99_000, key="warm-up", tier=TIER)
    seed.request(during, 500, 500, key=stack.key_ids["spent-today"], tier=TIER)
    seed.write()
    engine, stack.engine_url = start_sim_engine(tmp_path_factory.mktemp("slow-engine"), model=SLOW,
                                                extra=["--ttft-ms", "15000"])
    try:
        gateway, stack.url = start_gateway(home, {MODEL: sim_engine, SLOW: stack.engine_url},
                                           extra_env={"SPOT_GATEWAY__WORKERS": "2", "SPOT_BUDGET__TIMEZONE": ZONE})
        try:
            yield stack
        finally:
            gateway.stop()
    finally:
        engine.stop()


def test_a_budget_spent_yesterday_resets_at_midnight_and_a_monthly_one_at_the_month(stack: Stack) -> None:
    # Yesterday's $0.001 was over a daily $0.0005: today starts again.
    assert ask(stack, "spent-yesterday").status_code == 200
    # The same $0.001 is this month's: over a monthly $0.0005 until the next month.
    assert_exhausted(ask(stack, "spent-this-month"), "monthly", next_month(stack.now))
    # Today's $0.001 (1,000 of today's 1,000,000 tokens of $1) is over today's $0.0005.
    assert_exhausted(ask(stack, "spent-today"), "daily", midnight(stack.now) + timedelta(days=1))


def test_the_refusal_is_anthropic_shaped_on_messages_and_read_by_the_official_sdks(stack: Stack) -> None:
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=stack.keys["spent-today"], max_retries=0)
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    assert raised.value.code == "key_budget_exhausted"
    messages = anthropic.Anthropic(base_url=stack.url, api_key=stack.keys["spent-today"], max_retries=0)
    with pytest.raises(anthropic.RateLimitError) as refused:
        messages.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert "daily budget" in refused.value.message


def test_spot_keys_list_shows_spend_against_each_budget(stack: Stack) -> None:
    listed = subprocess.run([str(SPOT), "keys", "list", "--json"], env=clean_env(stack.home, SPOT_BUDGET__TIMEZONE=ZONE), capture_output=True,
                            text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    # Statements to the micro-dollar, as `spot cost --by key` prints them.
    assert abs(Decimal(rows["spent-this-month"]["spend_this_month_usd"]) - Decimal("0.001")) <= Decimal("0.000002")
    assert abs(Decimal(rows["spent-today"]["spend_today_usd"]) - Decimal("0.001")) <= Decimal("0.000002")
    assert Decimal(rows["spent-yesterday"]["spend_today_usd"]) < Decimal("0.0005")
    assert rows["spent-today"]["settings"]["daily_usd"] == 0.0005
    table = subprocess.run([str(SPOT), "keys", "list"], env=clean_env(stack.home, COLUMNS="250", SPOT_BUDGET__TIMEZONE=ZONE),
                           capture_output=True, text=True, timeout=60)
    line = next(line for line in table.stdout.splitlines() if "spent-today" in line)
    assert re.search(r"\$0\.00\d+ of \$0\.0005 today", line), table.stdout


def test_200_concurrent_requests_on_a_budget_for_50_forward_at_most_50(stack: Stack) -> None:
    """The issue's test. The engine takes 15 s to answer, so every request is in flight at once."""
    before = engine_requests(stack.engine_url)
    with ThreadPoolExecutor(200) as pool:
        answers = list(pool.map(lambda _: ask(stack, "burst", SLOW_BODY), range(200)))
    served = [a for a in answers if a.status_code == 200]
    assert len(served) == 50, sorted({a.status_code for a in answers})
    assert engine_requests(stack.engine_url) - before == 50  # what reached the engine
    assert len({a.headers["x-request-id"][:20] for a in answers}) == 2, "the burst did not reach both workers"
    for refused in (a for a in answers if a.status_code != 200):
        assert_exhausted(refused, "daily", midnight(stack.now) + timedelta(days=1))
    # A key without a budget is unaffected.
    assert ask(stack, "free").status_code == 200

    # The bill goes on at $1 per million tokens; the key's statement stays within its budget.
    store = Store(stack.home)
    deadline = time.monotonic() + 30
    while True:
        store.flush()
        with store.reading() as con:
            (rows, tokens) = con.execute(
                "SELECT count(*), sum(prompt_tokens + completion_tokens) FROM requests WHERE finished_at >= ?",
                [stack.sample_at]).fetchone()
        if rows >= 52 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    seed = Seed(store)
    at = datetime.now(UTC)
    seed.sample(seed.run(at), at, "vm-1", str(Decimal("1.002") + usd(int(tokens))), tier=TIER)
    seed.write()
    time.sleep(1.5)
    report = subprocess.run([str(SPOT), "cost", "--by", "key", "--json", "--since",
                             midnight(stack.now).isoformat()], env=clean_env(stack.home),
                            capture_output=True, text=True, timeout=60)
    assert report.returncode == 0, report.stderr
    statements = {row["key_id"]: row for row in json.loads(report.stdout)["rows"]}
    statement = Decimal(str(statements[stack.key_ids["burst"]]["statement_usd"]))
    assert Decimal(0) < statement <= usd(WORST_MICRO * 50 + WORST_MICRO // 2)


def test_an_aborted_stream_gives_back_what_it_reserved_beyond_its_tokens(stack: Stack) -> None:
    with httpx.Client(timeout=60) as first, httpx.Client(timeout=60) as second:
        streams = [client.stream("POST", f"{stack.url}/v1/chat/completions", content=STREAM_BODY,
                                 headers=bearer(stack.keys["streams"])) for client in (first, second)]
        for stream in streams:
            assert stream.__enter__().status_code == 200  # forwarded; the engine is still thinking
        # Two worst cases are reserved: a third does not fit while they are in flight.
        assert ask(stack, "streams", STREAM_BODY).status_code == 429
        for stream in streams:
            stream.__exit__(None, None, None)  # the clients leave before any token
    deadline = time.monotonic() + 10
    while (answer := ask(stack, "streams", STREAM_BODY.replace(b'"stream": true', b'"stream": false'))).status_code == 429:
        assert time.monotonic() < deadline, answer.text  # the reservations were never given back
        time.sleep(0.2)
    assert answer.status_code == 200, answer.text


def test_a_key_with_a_budget_is_refused_while_no_price_is_known(tmp_path: Path, sim_engine: str) -> None:
    store = Store(tmp_path)
    store.migrate()
    budgeted = create_key(store, "budgeted", KeySettings(daily_usd=Decimal(100))).key
    free = create_key(store, "free", KeySettings()).key
    gateway, url = start_gateway(tmp_path, {MODEL: sim_engine})
    try:
        answer = httpx.post(f"{url}/v1/chat/completions", content=BODY, headers=bearer(budgeted), timeout=30)
        assert answer.status_code == 503, answer.text
        error = answer.json()["error"]
        assert error["code"] == "price_unknown" and "no good billing sample" in error["message"]
        assert int(answer.headers["retry-after"]) >= 1
        assert httpx.post(f"{url}/v1/chat/completions", content=BODY, headers=bearer(free),
                          timeout=30).status_code == 200
    finally:
        gateway.stop()


@pytest.mark.parametrize(("payload", "output"), [
    ({"model": "m", "messages": [], "max_tokens": 50}, 50),
    ({"model": "m", "messages": [], "max_completion_tokens": 70, "max_tokens": 50}, 70),  # the larger cap
    ({"model": "m", "messages": [], "max_tokens": 50, "n": 3}, 150),
    ({"model": "m", "prompt": ["a", "b"], "max_tokens": 10, "best_of": 4, "n": 2}, 80),  # per prompt, per choice
    ({"model": "m", "prompt": [1, 2, 3], "max_tokens": 10}, 10),  # token ids: one prompt
    ({"model": "m", "input": "hi", "max_output_tokens": 30}, 30),  # Responses
    ({"model": "m", "messages": []}, DEFAULT_OUTPUT_TOKENS),  # no cap: the default
    ({"model": "m", "messages": [], "max_tokens": True}, DEFAULT_OUTPUT_TOKENS),  # not a count
], ids=["max_tokens", "both caps", "n", "prompts x best_of", "token ids", "responses", "no cap", "bool"])
def test_a_requests_worst_case_is_its_bytes_plus_every_output_it_may_get(payload: dict, output: int) -> None:
    body = json.dumps(payload).encode()
    assert worst_case_tokens(body) == len(body) + output


def test_a_body_that_is_not_json_is_its_bytes_plus_the_default_output() -> None:
    assert worst_case_tokens(b"--boundary\r\n...") == len(b"--boundary\r\n...") + DEFAULT_OUTPUT_TOKENS


def test_routes_that_generate_nothing_reserve_only_their_bytes() -> None:
    body = json.dumps({"model": "m", "input": ["a", "b"]}).encode()
    found = endpoints.match("/v1/embeddings")
    assert found is not None
    embeddings = parse_endpoint_request(found[0], body, content_type=b"application/json", path="/v1/embeddings",
                                        query=b"", response_id=None)
    assert not generates(embeddings) and worst_case_tokens(body, generates(embeddings)) == len(body)
    found = endpoints.match("/v1/responses")
    assert found is not None
    responses = parse_endpoint_request(found[0], body, content_type=b"application/json", path="/v1/responses",
                                       query=b"", response_id=None)
    assert generates(responses)
