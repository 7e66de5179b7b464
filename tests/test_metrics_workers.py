"""Metrics that are right with several gateway workers (issue 19, item 3).

A real `spot serve` with two workers behind one port, in front of `spot sim engine`, is sent
batches of N requests (until both workers have answered some) through the official `openai` SDK,
each on its own connection so the kernel spreads them over both workers (the x-request-id prefix
says which worker answered). One scrape of /metrics must then count every request sent: the
request counter, the latency histogram's count, and token counters equal to the ledger's sums.
"""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

from spotinference.key_settings import KeySettings
from spotinference.keys import create_key
from spotinference.store import Store
from tests.servers import SPOT, clean_env, operator_headers, start_gateway

MODEL = "tiny-chat"
N = 24


def scrape(url: str, home: Path) -> dict[str, float]:
    """Every sample of one /metrics scrape, summed over labels other than model and status."""
    response = httpx.get(f"{url}/metrics", headers=operator_headers(home), timeout=10)
    assert response.status_code == 200, response.text
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    return sums


def ledger(home: Path, rows: int) -> tuple[int, int]:
    """The ledger's prompt and completion token sums once it holds ``rows`` requests (each worker
    seals its spool segment every second)."""
    deadline = time.monotonic() + 30
    while True:
        subprocess.run([str(SPOT), "db", "flush"], env=clean_env(home), check=True, capture_output=True)
        with Store(home).reading() as con:
            count, prompt, completion = con.execute(
                "SELECT count(*), sum(prompt_tokens), sum(completion_tokens) FROM requests").fetchone()
        if count >= rows or time.monotonic() > deadline:
            assert count == rows
            return int(prompt), int(completion)
        time.sleep(0.3)


def test_one_scrape_counts_every_workers_requests(sim_engine: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    key = create_key(Store(home), "metrics", KeySettings()).key
    gateway, url = start_gateway(home, {MODEL: sim_engine}, extra_env={"SPOT_GATEWAY__WORKERS": "2"})
    try:
        def one(i: int) -> str:
            # A client of its own per request: a new connection, which either worker may accept.
            with openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0) as client:
                if i % 2:
                    raw = client.chat.completions.with_raw_response.create(
                        model=MODEL, messages=[{"role": "user", "content": f"hi {i}"}], max_tokens=6)
                    assert raw.parse().usage.completion_tokens > 0
                    return raw.headers["x-request-id"][:20]
                raw = client.chat.completions.with_raw_response.create(
                    model=MODEL, messages=[{"role": "user", "content": f"hi {i}"}], max_tokens=6, stream=True,
                    stream_options={"include_usage": True})
                assert [chunk for chunk in raw.parse()][-1].usage.completion_tokens > 0
                return raw.headers["x-request-id"][:20]

        sent, workers = 0, set()
        with ThreadPoolExecutor(8) as pool:
            # /health answered once one worker was up; the other may still be starting: more until both answered.
            while len(workers) < 2 and sent < 10 * N:
                if sent:
                    time.sleep(1)
                workers |= set(pool.map(one, range(sent, sent + N)))
                sent += N
        assert len(workers) == 2, f"{sent} requests all reached one worker: the test proves nothing"

        metrics = scrape(url, home)
        assert metrics["spot_requests_total"] == sent
        assert metrics["spot_upstream_latency_seconds_count"] == sent
        assert metrics["spot_time_to_first_token_seconds_count"] == sent // 2  # the streamed half
        assert metrics["spot_requests_in_flight"] == 0
        prompt, completion = ledger(home, sent)
        assert metrics["spot_prompt_tokens_total"] == prompt
        assert metrics["spot_completion_tokens_total"] == completion
        assert scrape(url, home)["spot_requests_total"] == sent  # whichever worker answers the next scrape
    finally:
        gateway.stop()
