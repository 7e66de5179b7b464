"""Requests on the new routes for a hibernated tier are held while the tier wakes (once), then
relayed to the woken engine: the fleet on `spot sim cloud`, as in tests/test_scale_to_zero.py.

`spot sim engine` does not serve these routes yet (branch i17-sim teaches it): until it does, the
woken engine answers them with vLLM's own 404 for an unknown route, which is what is asserted to
arrive, from the node that woke, after the hold. Once the simulator serves them, the statuses
become 200 and the token assertions of tests/test_gateway_routes.py apply.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import httpx
import pytest

from tests.test_fleet import Cloud, ok
from tests.test_scale_to_zero import MODEL, fleet, logged_rows, restore_calls, start_gateway, write_config  # noqa: F401

pytestmark = pytest.mark.slow

JSON_ROUTES = [
    ("/v1/responses", {"model": MODEL, "input": "hi", "max_output_tokens": 4}),
    ("/v1/responses", {"model": MODEL, "input": "hi", "max_output_tokens": 4, "stream": True}),
    ("/v1/messages", {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}], "stream": True}),
    ("/v1/messages/count_tokens", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/embeddings", {"model": MODEL, "input": ["a", "b"]}),
    ("/tokenize", {"model": MODEL, "prompt": "hi"}),
    ("/detokenize", {"model": MODEL, "tokens": [1, 2]}),
    ("/v1/score", {"model": MODEL, "text_1": "a", "text_2": "b"}),
    ("/v1/rerank", {"model": MODEL, "query": "a", "documents": ["b"]}),
]


def test_requests_on_every_new_route_are_held_through_one_wake_and_reach_the_woken_engine(
        fleet: Cloud, tmp_path: Path, home: Path) -> None:  # noqa: F811
    write_config(fleet.base_url, fallback=False)
    ok("up", "demo")
    ok("hibernate", "demo")
    restores = restore_calls(fleet)
    gateway = start_gateway(tmp_path, home)
    try:
        assert gateway.tier("demo")["state"] == "asleep"

        async def send_all() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=gateway.url, timeout=120,
                                         headers={"Authorization": f"Bearer {gateway.key}"}) as client:
                calls = [client.post(path, json=body) for path, body in JSON_ROUTES]
                calls.append(client.post("/v1/audio/transcriptions", data={"model": MODEL},
                                         files={"file": ("a.wav", io.BytesIO(b"RIFF" + b"\0" * 64), "audio/wav")}))
                return await asyncio.gather(*calls)

        answers = asyncio.run(send_all())
        assert restore_calls(fleet) == restores + 1  # one wake for all of them
        for (path, body), answer in zip([*JSON_ROUTES, ("/v1/audio/transcriptions", {})], answers, strict=True):
            assert answer.status_code != 503, (path, answer.text)
            if body.get("stream"):
                # Held streams get keep-alive comments, then the woken engine's answer.
                assert answer.text.startswith(": waking tier demo"), (path, answer.text[:200])
        rows = [r for r in logged_rows(len(answers)) if r["endpoint"] != "/v1/chat/completions"]
        assert len(rows) == len(answers)
        for row in rows:
            assert row["node"] is not None and row["wake_wait_ms"] > 0, row
    finally:
        gateway.server.stop()
