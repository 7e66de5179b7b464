"""Requests on the new routes for hibernated tiers are held while their tier wakes (once), then
relayed to the woken engine: the fleet on `spot sim cloud`, as in tests/test_scale_to_zero.py.

Three tiers of `spot sim engine` nodes, each configured as an operator would configure vLLM for
that kind of model: a chat model (Responses, Messages, count_tokens, tokenize, detokenize); an
embedding model, served by vLLM's pooling runner (`--runner pooling --convert embed` in the tier's
vLLM arguments: embeddings, score, rerank); and a speech model (transcription), which vLLM knows
by the model's architecture, and a simulated model says with `sim.runner`.
"""

from __future__ import annotations

import asyncio
import io
import json
import wave
from pathlib import Path

import httpx
import pytest

from tests.conftest import run_spot
from tests.fleet_config import sim_tier, write_fleet_config
from tests.servers import start_sim_engine
from tests.test_fleet import Cloud, ok
from tests.test_scale_to_zero import MODEL, fleet, restore_calls, start_gateway  # noqa: F401
from tests.token_log import logged_rows

pytestmark = pytest.mark.slow

EMBED = "tiny-embed"
WHISPER = "tiny-whisper"
SIM = {"load_seconds": 0.5, "ttft_ms": 20, "itl_ms": 5, "seed": 7}  # seed 7: as the direct engines below
TIERS = {
    "demo": sim_tier(sim=SIM),
    "embed": sim_tier(model=EMBED, sim=SIM, vllm={"max_model_len": 512,
                                                  "extra_args": ["--runner", "pooling", "--convert", "embed"]}),
    "whisper": sim_tier(model=WHISPER, sim={**SIM, "runner": "transcription"}),
}

CHAT_ROUTES = [
    ("/v1/responses", {"model": MODEL, "input": "hi", "max_output_tokens": 4}),
    ("/v1/responses", {"model": MODEL, "input": "hi", "max_output_tokens": 4, "stream": True}),
    ("/v1/messages", {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}], "stream": True}),
    ("/v1/messages/count_tokens", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}),
    ("/tokenize", {"model": MODEL, "prompt": "hi"}),
    ("/detokenize", {"model": MODEL, "tokens": [1, 2]}),
]
POOLING_ROUTES = [
    ("/v1/embeddings", {"model": EMBED, "input": ["a b", "c"]}),
    ("/v1/score", {"model": EMBED, "text_1": "a", "text_2": ["b", "c d"]}),
    ("/v1/rerank", {"model": EMBED, "query": "a", "documents": ["b", "c d"]}),
]


def _clip() -> bytes:
    clip = io.BytesIO()
    with wave.open(clip, "wb") as out:  # 1.5 s of 16 kHz mono silence
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(16000)
        out.writeframes(b"\0\0" * 24000)
    return clip.getvalue()


def _same_answer(held: dict, direct: dict) -> bool:
    """The same answer but for what each answer makes afresh (its id and creation time)."""
    fresh = ("id", "created")
    return {k: v for k, v in held.items() if k not in fresh} == {k: v for k, v in direct.items() if k not in fresh}


@pytest.fixture
def three_tiers(fleet: Cloud):  # noqa: F811
    yield fleet
    for tier in ("embed", "whisper"):  # the fleet fixture takes demo down
        run_spot("down", tier, "--terminate", "--yes")


def test_requests_on_every_new_route_are_held_through_one_wake_of_their_tier_and_served(
        three_tiers: Cloud, tmp_path: Path, home: Path, sim_pooling_engine: str) -> None:
    fleet = three_tiers
    gateway_settings = {"keepalive_s": 1, "health_interval_s": 0.5, "provider_refresh_s": 1}
    write_fleet_config(fleet.base_url, TIERS, gateway=gateway_settings, extra="[budget]\nenforce = false\n")
    for tier in TIERS:
        ok("up", tier)
        ok("hibernate", tier)
    restores = restore_calls(fleet)
    audio = _clip()
    gateway = start_gateway(tmp_path, home)
    whisper, whisper_url = start_sim_engine(tmp_path / "whisper", model=WHISPER, extra=["--runner", "transcription"])
    try:
        assert {gateway.tier(t)["state"] for t in TIERS} == {"asleep"}

        async def send_all() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=gateway.url, timeout=120,
                                         headers={"Authorization": f"Bearer {gateway.key}"}) as client:
                calls = [client.post(path, json=body) for path, body in CHAT_ROUTES + POOLING_ROUTES]
                calls.append(client.post("/v1/audio/transcriptions", data={"model": WHISPER},
                                         files={"file": ("a.wav", io.BytesIO(audio), "audio/wav")}))
                return await asyncio.gather(*calls)

        answers = asyncio.run(send_all())
        assert restore_calls(fleet) == restores + len(TIERS)  # one wake per tier, for all its requests
        for (path, body), answer in zip(CHAT_ROUTES, answers, strict=False):
            assert answer.status_code == 200, (path, answer.text[-300:])
            if body.get("stream"):
                # Held streams get keep-alive comments, then the woken engine's events.
                assert answer.text.startswith(": waking tier demo"), (path, answer.text[:200])
                assert answer.text.rstrip().endswith(('"type":"message_stop"}', '"type":"response.completed"}'))
        # The pooling tier's engine answers as `spot sim engine` serving the model as an embedding
        # model does (same vectors, scores and usage), not with the chat engine's 404.
        for (path, body), answer in zip(POOLING_ROUTES, answers[len(CHAT_ROUTES):], strict=False):
            assert answer.status_code == 200, (path, answer.text[-300:])
            direct = httpx.post(f"{sim_pooling_engine}{path}", json=body, timeout=30)
            assert direct.status_code == 200, direct.text
            assert _same_answer(answer.json(), direct.json()), (path, answer.text[:300], direct.text[:300])
        transcribed = answers[-1]
        assert transcribed.status_code == 200, transcribed.text
        direct = httpx.post(f"{whisper_url}/v1/audio/transcriptions", data={"model": WHISPER}, timeout=30,
                            files={"file": ("a.wav", io.BytesIO(audio), "audio/wav")})
        assert transcribed.json() == direct.json() and transcribed.json()["text"]

        rows = logged_rows(home, expect=len(answers))
        assert sorted(r["endpoint"] for r in rows) == sorted(
            [path for path, _ in CHAT_ROUTES + POOLING_ROUTES] + ["/v1/audio/transcriptions"])  # each once
        tier_of = {MODEL: "demo", EMBED: "embed", WHISPER: "whisper"}
        for row in rows:
            assert row["http_status"] == 200 and row["node"] is not None and row["wake_wait_ms"] > 0, row
            assert row["tier"] == tier_of[row["model"]], row
            if row["endpoint"] in ("/v1/responses", "/v1/messages"):
                assert row["completion_tokens"] == 4, row  # the engine's usage
        for (path, _), answer in zip(POOLING_ROUTES, answers[len(CHAT_ROUTES):], strict=False):
            row = next(r for r in rows if r["endpoint"] == path)
            assert (row["prompt_tokens"], row["completion_tokens"]) == (answer.json()["usage"]["prompt_tokens"], 0)
        row = next(r for r in rows if r["endpoint"] == "/v1/audio/transcriptions")
        assert (row["prompt_tokens"], row["completion_tokens"]) == (None, None)  # vLLM counts audio in seconds
        assert json.loads(row["extra"] or "null") == {"audio_seconds": transcribed.json()["usage"]["seconds"]}
    finally:
        whisper.stop()
        gateway.server.stop()
