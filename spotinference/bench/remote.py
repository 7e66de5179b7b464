"""`spot bench --on-node NODE`: the load generator runs ON the node, against its local engine.

The engine's ceiling without the network: ``loadgen.py`` and ``apis.py`` (stdlib + aiohttp,
nothing else of spot) are copied to the node through its Transport (SSH on real nodes), run
level by level with a Python that has aiohttp (vLLM's own environment on a GPU node; on an
emulated node, which is this machine, the Python spot runs in), its progress lines streamed
back, and its raw results read back as JSON; the figures are computed here, exactly as for a
local run.
"""

from __future__ import annotations

import json
import secrets
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..fleet.access import locate
from ..fleet.connect import engine_port, layout_for
from ..fleet.context import FleetContext
from ..fleet.engine_keys import engine_key
from ..nodes.errors import NodeError
from ..nodes.transport import Transport
from . import apis, loadgen

SCRIPTS = (Path(loadgen.__file__), Path(apis.__file__))  # loadgen.py imports its sibling apis.py


class NodeBench:
    """One node prepared for benchmarking; use as a context manager (cleans up after itself)."""

    def __init__(self, ctx: FleetContext, node: str) -> None:
        self.ctx = ctx
        self.node = node
        self.tier, self.vm = locate(ctx, node)
        layout = layout_for(self.vm)
        self.workdir = f"{layout.root}/tmp/spot-bench-{secrets.token_hex(4)}"
        self.engine_url = f"http://127.0.0.1:{engine_port(self.vm, self.tier)}"
        self.engine_key = engine_key(ctx.settings.home, self.vm.name)
        candidates = [f"{layout.venv}/bin/python"]
        command = self.tier.vllm.command
        if command and "python" in Path(command[0]).name:
            candidates.insert(0, command[0])
        if self.vm.node_dir:
            candidates.insert(0, sys.executable)  # an emulated node is this machine
        self.candidates = [*candidates, "python3"]
        self.transport: Transport | None = None
        self.python: str | None = None

    def __enter__(self) -> NodeBench:
        self.transport = self.ctx.transport(self.vm, self.tier)
        try:
            probe = "; ".join(
                f'if {shlex.quote(p)} -c "import aiohttp" >/dev/null 2>&1; then echo {shlex.quote(p)}; exit 0; fi'
                for p in self.candidates
            ) + "; exit 1"
            found = self.transport.run(probe, check=False, timeout_s=60)
            if not found.ok or not found.stdout.strip():
                raise NodeError(f"node {self.node}: no Python with aiohttp to run the load generator "
                                f"(tried {', '.join(self.candidates)})", node=self.node,
                                hint="install python3-aiohttp on the node (vLLM's environment has it)")
            self.python = found.stdout.strip().splitlines()[-1]
            for script in SCRIPTS:
                self.transport.put_file(f"{self.workdir}/{script.name}", script.read_bytes(), mode=0o644)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.transport is not None:
            try:
                self.transport.run(f"rm -rf {shlex.quote(self.workdir)}", check=False, timeout_s=30)
            except NodeError:
                pass
            self.transport.close()
            self.transport = None

    def execute(self, plan: dict[str, Any], on_event: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """A ``runner.Executor``: run one level on the node."""
        assert self.transport is not None and self.python is not None, "use NodeBench as a context manager"
        plan_path, result_path = f"{self.workdir}/plan.json", f"{self.workdir}/result.json"
        self.transport.put_file(plan_path, json.dumps(plan).encode(), mode=0o600)  # holds the engine key
        command = (f"rm -f {shlex.quote(result_path)} && cd {shlex.quote(self.workdir)} && exec "
                   + shlex.join([self.python, "loadgen.py", plan_path, result_path]))
        tail: list[str] = []
        for line in self.transport.follow(command):
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            if isinstance(event, dict) and "event" in event:
                on_event(event)
            elif line.strip():
                tail = [*tail[-19:], line]
        data = self.transport.read_file(result_path)
        if data is None:
            last = tail[-1] if tail else "no output"
            raise NodeError(f"node {self.node}: the load generator failed: {last}", node=self.node,
                            hint=f"its output ended with: {' | '.join(tail[-5:])}" if tail else None)
        return json.loads(data)
