"""`spot demo`: the whole loop on this machine, rendered live.

The loop itself is ``spotinference.demo``; this module renders its events (rich, on stderr, so
``--json`` keeps stdout for the result) and the closing `spot status` and `spot cost` tables.
"""

from __future__ import annotations

import shlex
import signal
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..output import print_json
from ..state import CliState

if TYPE_CHECKING:
    from rich.console import Console

    from spotinference.demo import DemoEvent, DemoResult


class _Renderer:
    """Steps and notes as lines; a changing status line as a spinner at a terminal, else as a
    line each time its state changes (so a log or a test sees the countdown without a flood)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.started = time.monotonic()
        self.status: Any = None
        self.last_live: str | None = None
        self.last_key: str | None = None

    def stamp(self) -> str:
        return f"[{time.monotonic() - self.started:6.1f}s]"

    def line(self, text: str, style: str | None = None) -> None:
        from rich.text import Text

        self.console.print(Text(f"{self.stamp()} {text}", style=style or ""))

    def __call__(self, event: DemoEvent) -> None:
        if event.kind == "live":
            self.live(event.message, event.data.get("key"))
            return
        self.close_live()
        if event.kind == "step":
            self.line(f"▶ {event.message}", "bold")
        elif event.kind == "fleet":
            self.line(f"    {event.message}", "dim")
        elif event.kind == "burst":
            self.burst(event.data["stats"])
        elif event.kind == "wake":
            self.wake(event.data["stats"])
        else:
            self.line(f"  {event.message}")

    def live(self, message: str, key: str | None) -> None:
        self.last_live = message
        if self.console.is_terminal:
            if self.status is None:
                self.status = self.console.status(message)
                self.status.start()
            else:
                self.status.update(message)
        elif key != self.last_key:
            self.line(f"  … {message}", "cyan")
        self.last_key = key

    def close_live(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None
            if self.last_live:
                self.line(f"  … {self.last_live}", "cyan")
        self.last_live = None
        self.last_key = None

    def burst(self, s: Any) -> None:
        ttft = "" if s.ttft_p50_ms is None else f"time to first token p50 {s.ttft_p50_ms:.0f} ms, p95 {s.ttft_p95_ms:.0f} ms; "
        self.line(f"  {s.ok}/{s.requests} ok ({s.streamed} streamed): {s.completion_tokens:,} output tokens in "
                  f"{s.wall_s:.1f} s = {s.output_tokens_per_s:,.0f} tokens/s; {ttft}"
                  f"latency p50 {s.latency_p50_ms:.0f} ms, p95 {s.latency_p95_ms:.0f} ms", "green")
        for error in s.errors:
            self.line(f"  failed: {error}", "red")

    def wake(self, s: Any) -> None:
        held = " and ".join(f"{h:.1f} s" for h in s.held_s)
        states = " → ".join(s.states_seen) or "?"
        self.line(f"  held {held} while the tier woke (tier states seen: {states}; up to {s.max_held} held at once), "
                  f"then answered: {s.ok}/{s.requests} ok, {s.completion_tokens} output tokens", "green")


def _console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def demo(
    ctx: typer.Context,
    keep: Annotated[bool, typer.Option("--keep", help="Leave everything running at the end and print the base URL and key.")] = False,
    engine: Annotated[str, typer.Option("--engine", help="The nodes' engine: sim (`spot sim engine`) or vllm (vLLM's CPU build, if installed).")] = "sim",
    port: Annotated[int | None, typer.Option("--port", help="The gateway's port (default 8000 if free, else any free port).", show_default=False)] = None,
    json: Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout (progress stays on stderr).")] = False,
    stop: Annotated[bool, typer.Option("--stop", help="Stop a demo left running by --keep (or one that crashed).")] = False,
    asleep_seconds: Annotated[float, typer.Option("--asleep-seconds", hidden=True, min=0,
                                                  help="How long the hibernated tier sleeps before it is woken.")] = 45.0,
) -> None:
    """The whole loop on this machine: emulated cloud, gateway, traffic, hibernation, wake, cost.

    Starts `spot sim cloud`, a billing sampler and `spot serve` as child processes, brings up a
    tier of emulated nodes, sends traffic through the `openai` SDK, lets the tier hibernate, wakes
    it with a request, and ends with `spot status` and `spot cost` for the demo's window.
    Timeouts are scaled down so it takes about two minutes. Ctrl-C stops everything it started.
    """
    from spotinference.demo import Demo, DemoOptions
    from spotinference.errors import InputError

    state: CliState = ctx.obj
    base_home = state.settings.home
    console = _console()
    if stop:
        if keep or port is not None:
            raise InputError("--stop takes no other option")
        _stop(base_home, console, json=json)
        return
    render = _Renderer(console)

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupt)
    try:
        with Demo(base_home, DemoOptions(engine=engine, gateway_port=port, asleep_s=asleep_seconds), on_event=render) as run:
            result = run.run()
            render.close_live()
            if not json:
                _show_end(run, result)
            if keep:
                run.keep()
        render.close_live()
    except KeyboardInterrupt:
        from spotinference.demo.runner import DemoInterrupted

        render.close_live()
        raise DemoInterrupted("interrupted: the demo stopped everything it started and deleted its VMs") from None
    render.line(f"demo done in {time.monotonic() - render.started:.0f} s", "bold")
    if keep:
        _show_kept(run, console)
    if json:
        data = result.to_dict()
        data["kept"] = keep
        if keep:
            data["key"] = run.key
            data["stop_command"] = "spot demo --stop"
        print_json(data)


def _show_end(run: Any, result: DemoResult) -> None:
    from rich.table import Table

    from spotinference.fleet.context import FleetContext

    from ..output import console
    from .fleet import _show_status
    from .money import _table

    out = console()
    out.print()
    out.print(f"$ spot status    [dim](the demo's fleet, at {result.base_url})[/dim]")
    context = FleetContext(run.settings, run.store)
    try:
        _show_status(context, None, json=False)
    finally:
        context.close()
    w = result.window
    out.print()
    out.print(f"$ spot cost --since {w.start.isoformat()} --until {w.end.isoformat()}"
              "    [dim](the demo's window; figures from the emulator's bill, sampled)[/dim]")
    _table(result.cost)
    s = result.savings
    if s is None:
        out.print("hibernation saving: not computed (spend unobservable or the VM's rate unknown)")
        return
    table = Table(title="hibernation vs an always-on tier (a comparison, not a bill)", title_justify="left",
                  show_header=False)
    table.add_column()
    table.add_column()
    table.add_row("always-on (same window)",
                  f"${s.always_on_usd:.4f} = (VM ${s.vm_usd_per_hour:.3f}/h at its full rate + volumes "
                  f"${s.storage_usd_per_hour:.4f}/h) × {s.billed_hours:.3f} billed hours "
                  f"({(w.end - w.start).total_seconds():.0f} s at the emulator's ×{result.time_scale:g} clock)")
    table.add_row("spend (the report above)", f"${s.spend_usd:.4f}")
    share = "" if s.saving_share is None else f" ({s.saving_share:.0%})"
    table.add_row("saved by hibernating", f"${s.saving_usd:.4f}{share}")
    out.print(table)
    out.print(f"[dim]same figures later: SPOT_HOME={shlex.quote(str(result.home))} spot --config "
              f"{shlex.quote(str(result.config_path))} cost --since {w.start.isoformat()} --until {w.end.isoformat()}[/dim]")


def _show_kept(run: Any, console: Console) -> None:
    from rich.markup import escape

    prefix = f"SPOT_HOME={shlex.quote(str(run.home))} spot --config {shlex.quote(str(run.config_path))}"
    lines = [
        "[bold]the demo keeps running[/bold] (--keep):",
        f"  base URL   {run.base_url}",
        f"  API key    {run.key}",
        f"  try it     OPENAI_BASE_URL={run.base_url} OPENAI_API_KEY={run.key} python -c "
        "\"import openai; print(openai.OpenAI().chat.completions.create(model='tiny-chat', "
        "messages=[{'role': 'user', 'content': 'hi'}]).choices[0].message.content)\"",
        f"  inspect    {prefix} status   (or cost, requests, logs spot-demo-1)",
        "  stop it    spot demo --stop   (deletes the VMs, stops the gateway, sampler and emulator)",
        f"  pids       {', '.join(f'{name} {pid}' for name, pid in ((n, c.pid) for n, c in run.children.items()))}",
    ]
    for line in lines:
        console.print(escape(line) if not line.startswith("[bold]") else line)


def _stop(base_home: Any, console: Console, *, json: bool) -> None:
    from spotinference.demo import running_demos, stop_demo

    runs = running_demos(base_home)
    render = _Renderer(console)
    stopped = []
    for run_dir in runs:
        result = stop_demo(run_dir, on_event=render)
        stopped.append({"run_dir": str(result.run_dir), "processes": result.processes})
        render.line(f"  stopped {result.processes} process(es); VMs deleted")
    if json:
        print_json({"stopped": stopped})
    elif not runs:
        typer.echo(f"no demo is running (none left running under {base_home / 'demo'})")
    else:
        typer.echo(f"stopped {len(runs)} demo(s): no process left, VMs deleted")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
