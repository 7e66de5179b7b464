"""Per-key rate, token and concurrency limits (issue 23) through a real `spot serve` with two
workers (and two gateways on one data directory), in front of `spot sim engine`: the limits hold
across processes within one request, answers carry OpenAI's x-ratelimit-* headers (read through
the official `openai` SDK), and past a limit the answer is a 429 `rate_limit_exceeded` with
Retry-After.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from spotinference.key_settings import KeySettings
from spotinference.keys import KeyRing, create_key
from spotinference.store import Store
from tests.servers import ServerProcess, start_gateway, start_sim_engine
from tests.test_scale_to_zero import wait_for

MODEL = "tiny-chat"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
LIMIT_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
                 "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")
GO_DURATION = re.compile(r"^(\d+ms|(\d+m)?\d+(\.\d+)?s)$")


@dataclass
class Stack:
    home: Path
    url: str  # two workers
    second_url: str  # another gateway on the same data directory
    slow_url: str  # two workers in front of a slow engine (for concurrency)

    def new_key(self, name: str, **settings: object) -> str:
        key = create_key(Store(self.home), name, KeySettings(**settings)).key  # type: ignore[arg-type]
        deadline = time.monotonic() + 5
        for url in (self.url, self.second_url, self.slow_url):
            while httpx.get(f"{url}/v1/models", headers=bearer(key)).status_code == 401:
                assert time.monotonic() < deadline, "the new key is not accepted"
                time.sleep(0.05)
        return key


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def worker_of(response: httpx.Response) -> str:
    return response.headers["x-request-id"][:20]  # req- + the worker's random prefix


@pytest.fixture(scope="module")
def stack(sim_engine: str, tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("gateway-key-limits")
    workers = {"SPOT_GATEWAY__WORKERS": "2"}
    slow_engine, slow_url = start_sim_engine(tmp_path_factory.mktemp("slow-engine"), extra=["--itl-ms", "150"])
    servers: list[ServerProcess] = [slow_engine]
    try:
        gateway, url = start_gateway(home, {MODEL: sim_engine}, extra_env=workers)
        servers.append(gateway)
        second, second_url = start_gateway(home, {MODEL: sim_engine})
        servers.append(second)
        slow, slow_gateway = start_gateway(home, {MODEL: slow_url}, extra_env=workers)
        servers.append(slow)
        yield Stack(home, url, second_url, slow_gateway)
    finally:
        for server in reversed(servers):
            server.stop()


def burst(url: str, key: str, count: int, body: dict = CHAT) -> list[httpx.Response]:
    """``count`` requests at once, each on its own connection (so the kernel spreads them over workers)."""
    def one(_: int) -> httpx.Response:
        return httpx.post(f"{url}/v1/chat/completions", json=body, headers=bearer(key), timeout=60)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def burst_over_both_workers(stack: Stack, url: str, name: str, count: int, body: dict = CHAT, *,
                            attempts: int = 5, **settings: object) -> tuple[str, list[httpx.Response], float]:
    """A burst (on a new key each try) that both workers answered: the kernel hands a burst's
    connections to whichever worker is awake, and on a loaded machine one worker can take them all,
    which would prove nothing about limits shared across workers. Also returns how long it took."""
    for attempt in range(attempts):
        key = stack.new_key(f"{name}-{attempt}", **settings)
        started = time.monotonic()
        answers = burst(url, key, count, body)
        if len({worker_of(a) for a in answers}) == 2:
            return key, answers, time.monotonic() - started
    pytest.fail(f"{attempts} bursts of {count} each reached only one worker")


def assert_refused(response: httpx.Response, limit: str) -> None:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert limit in error["message"]
    assert int(response.headers["retry-after"]) >= 1


def test_requests_per_minute_hold_across_two_workers_within_one_request(stack: Stack) -> None:
    rpm = 12
    key, answers, took_s = burst_over_both_workers(stack, stack.url, "rpm-burst", 40, rpm=rpm)
    refill = int(took_s * rpm / 60)  # what the bucket regained during the burst
    served = [a for a in answers if a.status_code == 200]
    assert rpm <= len(served) <= rpm + 1 + refill, [a.status_code for a in answers]
    for refused in (a for a in answers if a.status_code != 200):
        assert_refused(refused, f"limit of {rpm} requests per minute")
    # The other gateway on this data directory sees the same spent minute, once it knows the new key
    # (keys reach a running gateway within about a second; /v1/models spends no request of the key).
    wait_for(lambda: httpx.get(f"{stack.second_url}/v1/models", headers=bearer(key)).status_code == 200, 10,
             "the second gateway to know the new key")
    assert_refused(httpx.post(f"{stack.second_url}/v1/chat/completions", json=CHAT, headers=bearer(key)),
                   "requests per minute")


def test_tokens_per_minute_are_settled_from_the_engines_usage_across_gateways(stack: Stack) -> None:
    tpm = 150
    key = stack.new_key("tpm-steps", tpm=tpm)
    spent: list[int] = []
    started = time.monotonic()
    for turn in range(40):  # one at a time, alternating between the two gateways
        url = (stack.url, stack.second_url)[turn % 2]
        answer = httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers=bearer(key), timeout=30)
        if answer.status_code == 429:
            assert_refused(answer, f"limit of {tpm} tokens per minute")
            break
        assert answer.status_code == 200, answer.text
        spent.append(answer.json()["usage"]["total_tokens"])
    else:
        pytest.fail(f"no 429 after {sum(spent)} tokens against a limit of {tpm} per minute")
    refill = (time.monotonic() - started) * tpm / 60
    # Each was admitted while tokens were left (so all but the last fit the minute's tokens, plus
    # what refilled meanwhile), and the refusal came once they were spent: within one request.
    assert sum(spent[:-1]) < tpm + refill
    assert sum(spent) >= tpm
    assert len(spent) >= 2, "both gateways served the key"


def test_concurrent_requests_hold_across_two_workers_and_are_freed_when_streams_end(stack: Stack) -> None:
    slow = {**CHAT, "max_tokens": 24, "stream": True}  # ~3.6 s each on the slow engine: the burst lands first
    key, answers, _ = burst_over_both_workers(stack, stack.slow_url, "three-at-once", 12, slow, max_concurrent=3)
    assert sum(a.status_code == 200 for a in answers) == 3, [a.status_code for a in answers]
    for refused in (a for a in answers if a.status_code != 200):
        assert_refused(refused, "limit of 3 requests at once")
    # A client that leaves mid-stream frees its place as well.
    for _ in range(2):
        with httpx.stream("POST", f"{stack.slow_url}/v1/chat/completions", json=slow, headers=bearer(key),
                          timeout=30) as stream:
            assert stream.status_code == 200
            next(stream.iter_bytes())
    deadline = time.monotonic() + 10
    while (answers := burst(stack.slow_url, key, 3, {**slow, "max_tokens": 2})) and \
            any(a.status_code != 200 for a in answers):
        assert time.monotonic() < deadline, [a.status_code for a in answers]  # the aborts may take a moment
        time.sleep(0.2)


def test_limit_headers_parse_in_the_openai_sdk_and_a_refusal_is_its_rate_limit_error(stack: Stack) -> None:
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=stack.new_key("sdk", rpm=2, tpm=100_000),
                           max_retries=0)
    raw = client.chat.completions.with_raw_response.create(**CHAT)
    assert raw.parse().choices
    assert int(raw.headers["x-ratelimit-limit-requests"]) == 2
    assert int(raw.headers["x-ratelimit-remaining-requests"]) == 1
    assert int(raw.headers["x-ratelimit-limit-tokens"]) == 100_000
    assert 0 < int(raw.headers["x-ratelimit-remaining-tokens"]) <= 100_000
    assert all(GO_DURATION.match(raw.headers[h]) for h in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"))
    streamed = client.chat.completions.with_raw_response.create(**CHAT, stream=True)
    assert int(streamed.headers["x-ratelimit-remaining-requests"]) == 0
    assert list(streamed.parse())
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(**CHAT)
    assert caught.value.code == "rate_limit_exceeded"
    assert int(caught.value.response.headers["retry-after"]) >= 1
    assert all(h in caught.value.response.headers for h in LIMIT_HEADERS)
    # Keys without limits carry no such headers.
    plain = client.with_options(api_key=stack.new_key("no-limits")).chat.completions.with_raw_response.create(**CHAT)
    assert not any(h in plain.headers for h in LIMIT_HEADERS)


def test_a_dead_workers_places_are_given_back(home: Path, tmp_path: Path) -> None:
    """A worker killed (-9) while it holds a key's places: the next refusal finds it dead and frees them."""
    from spotinference.gateway.key_limits import KeyLimits, RateLimited

    store = Store(home)
    new = create_key(store, "two-at-once", KeySettings(max_concurrent=2))
    holder = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys, time; from pathlib import Path\n"
            "from spotinference.store import Store\nfrom spotinference.keys import KeyRing\n"
            "from spotinference.gateway.key_limits import KeyLimits\n"
            f"home = Path({str(home)!r}); limits = KeyLimits(KeyRing(Store(home)), home / 'gateway')\n"
            f"limits.admit({new.key_id!r}); limits.admit({new.key_id!r})\n"
            "print('held', flush=True); time.sleep(600)\n")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "SPOT_HOME": str(home)})
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        limits = KeyLimits(KeyRing(store), home / "gateway")
        with pytest.raises(RateLimited, match="limit of 2 requests at once"):
            limits.admit(new.key_id)  # the holder is alive: its places count
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert limits.admit(new.key_id) is not None and limits.admit(new.key_id) is not None
    with pytest.raises(RateLimited):
        limits.admit(new.key_id)


def test_the_other_routes_count_against_the_same_limits_in_their_own_shapes(stack: Stack) -> None:
    import anthropic

    key = stack.new_key("every-route", rpm=2)
    responses = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0).responses
    raw = responses.with_raw_response.create(model=MODEL, input="hi", max_output_tokens=4)
    assert raw.parse().id and raw.headers["x-ratelimit-remaining-requests"] == "1"
    messages = anthropic.Anthropic(base_url=stack.url, api_key=key, max_retries=0).messages
    answered = messages.with_raw_response.create(model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    assert answered.parse().content is not None and answered.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(anthropic.RateLimitError) as caught:
        messages.create(model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert "limit of 2 requests per minute" in caught.value.message
    assert int(caught.value.response.headers["retry-after"]) >= 1
    assert caught.value.response.headers["x-ratelimit-limit-requests"] == "2"
    with pytest.raises(openai.RateLimitError):
        responses.create(model=MODEL, input="hi", max_output_tokens=4)


def test_spot_keys_update_changes_a_running_gateways_limits_within_a_second(stack: Stack) -> None:
    from tests.conftest import run_spot

    key = stack.new_key("raised", rpm=1)
    ask = lambda: httpx.post(f"{stack.url}/v1/chat/completions", json=CHAT, headers=bearer(key), timeout=30)  # noqa: E731
    assert ask().status_code == 200
    assert_refused(ask(), "limit of 1 request per minute")
    raised = run_spot("keys", "update", "raised", "--rpm", "1000", env={"SPOT_HOME": str(stack.home)})
    assert raised.returncode == 0, raised.stderr
    deadline = time.monotonic() + 5
    while (answer := ask()).status_code == 429:
        assert time.monotonic() < deadline, "the raised limit did not reach the gateway"
        time.sleep(0.05)
    assert answer.status_code == 200 and answer.headers["x-ratelimit-limit-requests"] == "1000"
    cleared = run_spot("keys", "update", "raised", "--clear", "rpm", env={"SPOT_HOME": str(stack.home)})
    assert cleared.returncode == 0, cleared.stderr
    deadline = time.monotonic() + 5
    while "x-ratelimit-limit-requests" in (answer := ask()).headers:
        assert time.monotonic() < deadline, "the cleared limit did not reach the gateway"
        time.sleep(0.05)
    assert answer.status_code == 200
