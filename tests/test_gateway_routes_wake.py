"""Requests on the new routes for a hibernated tier are held while the tier wakes (once), then
relayed to the woken engine: the fleet on `spot sim cloud`, as in tests/test_scale_to_zero.py.

The tier serves a chat model (`spot sim engine`, runner "generate"): Responses, Messages,
count_tokens, tokenize and detokenize are answered 200 after the wake; embeddings, score, rerank
and audio get the engine's own 404, as vLLM never mounts them for a chat model; either way the
request waited for the wake and reached the node that woke.
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

SERVED_BY_A_CHAT_MODEL = {"/v1/responses", "/v1/messages", "/v1/messages/count_tokens", "/tokenize", "/detokenize"}
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
            if path in SERVED_BY_A_CHAT_MODEL:
                assert answer.status_code == 200, (path, answer.text[-300:])
            else:
                assert (answer.status_code, answer.json()) == (404, {"detail": "Not Found"}), (path, answer.text)
            if body.get("stream"):
                # Held streams get keep-alive comments, then the woken engine's events.
                assert answer.text.startswith(": waking tier demo"), (path, answer.text[:200])
                assert answer.text.rstrip().endswith(('"type":"message_stop"}', '"type":"response.completed"}'))
        rows = [r for r in logged_rows(len(answers)) if r["endpoint"] != "/v1/chat/completions"]
        assert len(rows) == len(answers)
        for row in rows:
            assert row["node"] is not None and row["wake_wait_ms"] > 0, row
            if row["endpoint"] in ("/v1/responses", "/v1/messages"):
                assert row["status"] == 200 and row["completion_tokens"] == 4, row  # the engine's usage
    finally:
        gateway.server.stop()
