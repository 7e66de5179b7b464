"""The budget gate on every route the gateway relays beyond chat: while it is closed each one is
refused as chat is (same status, Retry-After, the route's error shape), no request reaches the
engine, and the refused requests' rows carry no tokens.

A running `spot serve` on a fleet whose provider is `spot sim cloud` (so it has billing and a
gate), with a real `spot sample` loop as in tests/test_budget_gate.py; the tier's engine is the
stand-in engine (tests/stand_in_engine.py), which serves every route and keeps every request it
gets, so "the engine was not contacted" is a count, not a guess.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from spotinference.gateway import endpoints
from tests.fleet_config import sim_tier, write_fleet_config
from tests.stand_in_engine import StandInEngine
from tests.test_budget_gate import Sampler, cloud, gate, with_budget  # noqa: F401 - cloud is a fixture
from tests.test_fleet import Cloud
from tests.test_gateway_routes import POOL, assert_error_shape, call, client_routes
from tests.test_scale_to_zero import start_gateway, wait_for
from tests.token_log import logged_rows

# The routes relayed to an engine; /v1/models and /v1/models/{id} are the gateway's own answer.
RELAYED = [(method, path, anthropic) for method, path, anthropic in client_routes()
           if not path.startswith("/v1/models") and path not in ("/v1/chat/completions", "/v1/completions")]


def test_a_closed_gate_refuses_every_route_as_chat_without_reaching_the_engine(
        cloud: Cloud, tmp_path: Path, home: Path) -> None:  # noqa: F811
    with StandInEngine() as engine:
        # The tier is named demo: the cloud fixture takes `demo` down when the test ends.
        write_fleet_config(cloud.base_url, {"demo": sim_tier(model=POOL, upstreams=[engine.url])},
                           gateway={"keepalive_s": 1, "health_interval_s": 0.5, "provider_refresh_s": 1})
        with_budget(None)  # no daily budget: stale billing alone closes the gate
        sampler = Sampler(tmp_path)
        gateway = start_gateway(tmp_path, home)
        try:
            wait_for(lambda: gate(gateway)["open"], 30, "the gate to open on fresh samples")
            auth = {"Authorization": f"Bearer {gateway.key}"}
            created = httpx.post(f"{gateway.url}/v1/responses", headers=auth, timeout=30,
                                 json={"model": POOL, "input": "kept on the engine", "max_output_tokens": 2})
            assert created.status_code == 200, created.text
            routes = [(m, p.replace("resp_x", created.json()["id"]), a) for m, p, a in RELAYED]
            # Open: every route reaches the engine (whatever the stand-in answers).
            for method, path, _ in routes:
                before = len(engine.calls)
                answered = call(gateway, method, path, auth)
                assert len(engine.calls) == before + 1, (path, answered.status_code, answered.text)

            sampler.stop()  # billing is now unobservable: the gate closes
            wait_for(lambda: not gate(gateway)["open"], 30, "the gate to close")
            chat = call(gateway, "POST", "/v1/chat/completions", auth)
            assert chat.status_code == 503 and chat.json()["error"]["code"] == "billing_unobservable"
            calls = len(engine.calls)
            refused_ids = {}
            for method, path, anthropic in routes:
                refused = call(gateway, method, path, auth)
                assert refused.status_code == chat.status_code, (path, refused.text)
                assert int(refused.headers["retry-after"]) > 0, path
                error = assert_error_shape(refused, anthropic)
                if anthropic:
                    assert error["type"] == "overloaded_error", error  # Anthropic's name for a 503
                else:
                    assert error["code"] == "billing_unobservable", error
                refused_ids[refused.headers["x-request-id"]] = endpoints.match(path)[0].name  # type: ignore[index]
            assert len(engine.calls) == calls  # not one reached the engine

            rows = logged_rows(home, set(refused_ids), expect=len(refused_ids))
            assert len(rows) == len(refused_ids)
            for row in rows:
                assert row["endpoint"] == refused_ids[row["request_id"]], row
                assert row["http_status"] == 503 and "billing" in row["error"], row
                assert (row["prompt_tokens"], row["completion_tokens"]) == (0, 0), row  # nothing was served
        finally:
            sampler.stop()
            gateway.server.stop()
