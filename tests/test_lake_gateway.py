"""`spot serve` on the DuckLake store (issue 20): the gateway from the ducklake venv spools each
request locally and its flush process (handed the catalog's password over a pipe) copies the rows
into the lake, where `spot requests` on any host reads them, each once."""

from __future__ import annotations

import json
import time

import openai
import pytest

from tests.lake_fixtures import new_lake
from tests.servers import ServerProcess, clean_env, free_port

pytestmark = pytest.mark.slow


def test_a_gateway_on_the_lake_logs_every_request_once(lake_venv, postgres, sim_engine, tmp_path):
    lake = new_lake(postgres, tmp_path, tmp_path / "gateway-home")
    created = lake_venv.run_spot("keys", "create", "app", "--json", env=lake.env)
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)["key"]
    port = free_port()
    gateway = ServerProcess([str(lake_venv.spot), "serve", "--port", str(port), "--upstream", f"tiny-chat={sim_engine}"],
                            env=clean_env(lake.home, **lake.env), log_path=tmp_path / "gateway.log",
                            health_url=f"http://127.0.0.1:{port}/health").start()
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
        ids = [client.chat.completions.create(model="tiny-chat", max_tokens=8,
                                              messages=[{"role": "user", "content": f"hi {n}"}]).id
               for n in range(20)]
        rows: list[dict] = []
        deadline = time.monotonic() + 60  # rows reach the lake off the hot path
        while len(rows) < 20 and time.monotonic() < deadline:
            time.sleep(0.5)
            listed = lake_venv.run_spot("requests", "--last", "100", "--json", env=lake.env)
            assert listed.returncode == 0, listed.stderr
            rows = json.loads(listed.stdout)
    finally:
        gateway.stop()
    assert len(rows) == 20
    assert {r["status"] for r in rows} == {200} and {r["key_name"] for r in rows} == {"app"}
    assert all(r["completion_tokens"] > 0 for r in rows)
    assert len({r["id"] for r in rows}) == 20 and len(ids) == 20
    # Stopped: what was spooled is in the lake, nothing waits, nothing doubled.
    final = json.loads(lake_venv.run_spot("requests", "--last", "100", "--json", env=lake.env).stdout)
    assert len(final) == 20
    assert not list((lake.home / "spool").glob("*.jsonl"))
    assert lake.password not in (tmp_path / "gateway.log").read_text()
