"""`spot demo --stop`: end a demo left running by --keep, or one that crashed."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SpotError
from ..store import Store
from . import setup
from .processes import cmdline_names, processes_of, stop_group, sweep
from .results import DemoEvent

MANIFEST = "demo.json"


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass(frozen=True)
class Stopped:
    run_dir: Path
    processes: int


def running_demos(base_home: Path) -> list[Path]:
    """Run directories whose manifest says the demo is still running or was kept."""
    found = []
    for manifest in sorted((base_home / "demo").glob(f"*/{MANIFEST}")):
        try:
            state = json.loads(manifest.read_text()).get("state")
        except (OSError, ValueError):
            continue
        if state != "stopped" or processes_of(manifest.parent):
            found.append(manifest.parent)
    return found


def delete_demo_vms(context: Any, run_dir: Path, reason: str) -> None:
    """Terminate both demo tiers' VMs (closing ``context``, a FleetContext), then give the
    emulator up to 10 s to stop their engines."""
    from ..fleet.operations import Fleet

    try:
        for tier in (setup.TIER, setup.FALLBACK_TIER):
            with contextlib.suppress(SpotError):
                Fleet(context).down(tier, terminate=True, reason=reason)
    finally:
        context.close()
    deadline = time.monotonic() + 10
    while processes_of(run_dir / "cloud" / "nodes") and time.monotonic() < deadline:
        time.sleep(0.1)


def stop_demo(run_dir: Path, on_event: Callable[[DemoEvent], None] | None = None) -> Stopped:
    """End a kept (or crashed) demo: gateway, VMs, sampler, emulator, then any leftover."""
    from ..fleet.context import FleetContext

    emit = on_event or (lambda event: None)
    manifest = json.loads((run_dir / MANIFEST).read_text())
    pids: dict[str, int] = manifest.get("pids", {})
    found = len(processes_of(run_dir))
    with _signals_ignored():
        emit(DemoEvent("step", f"stopping the demo in {run_dir}"))
        if "gateway" in pids and cmdline_names(pids["gateway"], run_dir):
            stop_group(pids["gateway"])
        config = Path(manifest["config"])
        cloud = pids.get("cloud emulator")
        if config.is_file() and cloud and cmdline_names(cloud, run_dir):
            settings = setup.load_demo_settings(config)

            def progress(update: Any) -> None:
                emit(DemoEvent("fleet", f"{update.node or update.tier}: {update.message}"))

            context = FleetContext(settings, Store.from_settings(settings), on_progress=progress, poll_interval_s=0.5)
            delete_demo_vms(context, run_dir, "spot demo --stop")
        for name in ("billing sampler", "cloud emulator"):
            if name in pids and cmdline_names(pids[name], run_dir):
                stop_group(pids[name])
        sweep(run_dir)
        manifest["state"] = "stopped"
        (run_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return Stopped(run_dir, found)
