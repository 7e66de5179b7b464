"""The held-request cap counts clients still waiting, not clients that already left.

A tier of `spot sim cloud` nodes hibernated behind a real gateway with max_held_requests = 2:
two streamed requests are held (each gets its first keep-alive comment), their clients hang up,
and a third request must then be held and served once the tier wakes, not refused with 503
too_many_held_requests because of two clients that are gone.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx

from tests.fleet_config import sim_tier, write_fleet_config
from tests.test_fleet import Cloud, ok
from tests.test_scale_to_zero import MODEL, fleet, start_gateway, wait_for  # noqa: F401 - fleet is a fixture


def held_stream(url: str, key: str) -> socket.socket:
    """A streamed request sent over a raw socket, returned once the gateway says it is held."""
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
    return sock


def test_clients_that_left_while_held_do_not_count_toward_the_cap(fleet: Cloud, tmp_path: Path, home: Path) -> None:  # noqa: F811
    tiers = {"demo": sim_tier(max_held_requests=2, wake_timeout_s=120, idle_timeout_s=600,
                              sim={"load_seconds": 2, "ttft_ms": 5, "itl_ms": 5})}
    # About held requests, with no sampler running: the budget gate is off here (test_budget_gate.py).
    write_fleet_config(fleet.base_url, tiers, gateway={"keepalive_s": 1, "health_interval_s": 0.5, "provider_refresh_s": 1},
                       extra="[budget]\nenforce = false\n")
    ok("up", "demo")
    ok("hibernate", "demo")
    gateway = start_gateway(tmp_path, home)
    try:
        first, second = held_stream(gateway.url, gateway.key), held_stream(gateway.url, gateway.key)
        assert gateway.tier("demo")["held_requests"] == 2
        first.close()
        second.close()
        wait_for(lambda: gateway.tier("demo")["held_requests"] == 0, 10, "the gateway to see both clients gone")
        assert gateway.tier("demo")["state"] == "waking"
        response = httpx.post(f"{gateway.url}/v1/chat/completions", timeout=120,
                              headers={"Authorization": f"Bearer {gateway.key}"},
                              json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["completion_tokens"] > 0
    finally:
        gateway.server.stop()
