"""/health and /metrics count every worker's held requests (issue 19, item 3).

A tier of `spot sim cloud` nodes hibernated behind a real gateway with two workers: streamed
requests, each on its own connection and sent at once, are held while the tier wakes (the engine takes 10 s to
load, so they stay held while the test looks). Both workers hold some (the x-request-id prefix
says which worker answered); /health's held_requests and the scrape's spot_tier_held_requests
must be the total, whichever worker answers, and drop to 0 once the clients have left; the
finished wake is then in spot_tier_wake_seconds.
"""

from __future__ import annotations

import json
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.fleet_config import sim_tier, write_fleet_config
from tests.servers import operator_headers
from tests.test_fleet import Cloud, ok
from tests.test_scale_to_zero import MODEL, fleet, start_gateway, wait_for  # noqa: F401 - fleet is a fixture

HELD = 6


def held_stream(url: str, key: str) -> tuple[socket.socket, str]:
    """A streamed request over a raw socket, once the gateway says it is held; and which worker holds it."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True})
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer %s\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (key.encode(), len(body), body.encode()))
    seen = b""
    while b": waking tier demo" not in seen:
        data = sock.recv(65536)
        assert data, f"closed before the keep-alive comment: {seen[:300]!r}"
        seen += data
    request_id = re.search(rb"x-request-id: (req-\S+)", seen, re.IGNORECASE)
    assert request_id, seen[:300]
    return sock, request_id.group(1).decode()[:20]


def hold_on_both_workers(url: str, key: str, *, pause_s: float) -> list[tuple[socket.socket, str]]:
    """Held streams sent ``HELD`` at a time until both of the gateway's workers hold some."""
    held: list[tuple[socket.socket, str]] = []
    with ThreadPoolExecutor(HELD) as pool:  # at once, so that both workers accept some
        # /health answered once one worker was up; the other may still be starting: more until both hold.
        while len({worker for _, worker in held}) < 2 and len(held) < 10 * HELD:
            if held:
                time.sleep(pause_s)
            held += pool.map(lambda _: held_stream(url, key), range(HELD))
    assert len({worker for _, worker in held}) == 2, f"{len(held)} held requests all reached one worker"
    return held


def read_held_answers(held: list[tuple[socket.socket, str]], timeout_s: float = 120) -> None:
    """Every held stream read to its end: each must end in ``[DONE]`` (it was served)."""
    for sock, _ in held:
        sock.settimeout(timeout_s)
        answer = b""
        while not answer.endswith(b"0\r\n\r\n"):  # the chunked body's last chunk
            piece = sock.recv(65536)
            assert piece, answer[-300:]
            answer += piece
        assert b"data: [DONE]" in answer, answer[-300:]
        sock.close()


def scraped(url: str, home: Path, name: str) -> float:
    """One scrape's ``name`` for tier demo."""
    text = httpx.get(f"{url}/metrics", headers=operator_headers(home), timeout=5).text
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples if sample.name == name and sample.labels["tier"] == "demo")


def scraped_held(url: str, home: Path) -> float:
    return scraped(url, home, "spot_tier_held_requests")


def test_health_and_metrics_sum_every_workers_held_requests(fleet: Cloud, tmp_path: Path, home: Path) -> None:  # noqa: F811
    tiers = {"demo": sim_tier(max_held_requests=100, wake_timeout_s=120, idle_timeout_s=600,
                              sim={"load_seconds": 10, "ttft_ms": 5, "itl_ms": 5})}
    # About held requests, with no sampler running: the budget gate is off here (test_budget_gate.py).
    write_fleet_config(fleet.base_url, tiers, gateway={"workers": 2, "keepalive_s": 1, "health_interval_s": 0.5,
                                                       "provider_refresh_s": 1},
                       extra="[budget]\nenforce = false\n")
    ok("up", "demo")
    ok("hibernate", "demo")
    gateway = start_gateway(tmp_path, home)
    try:
        held = hold_on_both_workers(gateway.url, gateway.key, pause_s=1)
        count = len(held)
        # Each worker publishes its count every 0.25 s: wait for the last one, then every answer agrees.
        wait_for(lambda: gateway.tier("demo")["held_requests"] == count, 10, f"/health to count {count} held")
        for _ in range(6):  # several answers, each from whichever worker accepts its connection
            assert gateway.tier("demo")["held_requests"] == count
            assert scraped_held(gateway.url, home) == count
        for sock, _ in held:
            sock.close()
        wait_for(lambda: gateway.tier("demo")["held_requests"] == 0, 10, "/health to see every client gone")
        assert scraped_held(gateway.url, home) == 0
        # The wake goes on without them; once it is over, the scrape has its duration.
        assert scraped(gateway.url, home, "spot_tier_wake_seconds_count") == 0
        wait_for(lambda: gateway.tier("demo")["state"] == "serving", 60, "the tier to wake")
        wait_for(lambda: scraped(gateway.url, home, "spot_tier_wake_seconds_count") >= 1, 10, "the wake to be counted")
        assert scraped(gateway.url, home, "spot_tier_wake_seconds_sum") >= 10  # the engine alone loads for 10 s
    finally:
        gateway.server.stop()
