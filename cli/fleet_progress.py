"""How a fleet command shows on stderr what it is doing, from the library's ``Progress`` callbacks
and the provider client's retry notices (log records carrying ``spot_retry``).

- At a terminal: each change as a line that stays, plus a live line per node, refreshed in place,
  with its step, the provider's status and a clock that keeps ticking between reports.
- Not at a terminal (a log file, CI): each change as a line, and a "still ..." line when nothing
  was written for ``HEARTBEAT_S``, so a log shows the command is alive.
- With ``--json``: the same lines as JSON objects, one per line (stdout keeps its one document).

Each retry of a provider call is one line in every form, quiet commands included: retries are
rare, bounded by the retry deadline (a handful of lines at most), and during a backoff they are
the only sign that the command is waiting on the provider rather than hung.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from spotinference.fleet.context import Progress
from spotinference.fleet.states import NodeState

HEARTBEAT_S = 10.0
#: a node whose last report is one of these is not waiting on anything
_SETTLED = {NodeState.SERVING, NodeState.HIBERNATED, NodeState.TERMINATED, NodeState.FAILED, NodeState.STOPPED}
_RETRY_LOGGER = "spotinference.providers"


class FleetProgressView:
    def __init__(self, *, json_lines: bool = False, quiet: bool = False, stream: IO[str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.json_lines = json_lines
        self.live_at_terminal = not quiet and not json_lines and self.stream.isatty()
        self.clock = clock
        self.started = clock()
        self._lock = threading.Lock()  # guards _nodes and _last_line_at, never held while writing
        self._write_lock = threading.Lock()
        self._nodes: dict[str, tuple[Progress, float]] = {}  # the last report per node, and when it came
        self._last_line_at = self.started
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._live: Any = None
        self._console: Any = None
        self._retries = _RetryHandler(self)
        self._level_before: int | None = None
        self._spinners: dict[str, Any] = {}

    # -- lifetime ------------------------------------------------------------------------------

    def __enter__(self) -> FleetProgressView:
        logger = logging.getLogger(_RETRY_LOGGER)
        logger.addHandler(self._retries)
        if logger.getEffectiveLevel() > logging.INFO:
            self._level_before = logger.level
            logger.setLevel(logging.INFO)
        if self.live_at_terminal:
            from rich.console import Console
            from rich.live import Live

            self._console = Console(file=self.stream, stderr=True, highlight=False)
            self._live = Live(self, console=self._console, transient=True, refresh_per_second=4,
                              redirect_stdout=False, redirect_stderr=False)
            self._live.start()
        elif not self.quiet:
            self._heartbeat = threading.Thread(target=self._beat, name="spot-heartbeat", daemon=True)
            self._heartbeat.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """End the live line and the heartbeat (before the final table is printed)."""
        self._stop.set()
        logger = logging.getLogger(_RETRY_LOGGER)
        logger.removeHandler(self._retries)
        if self._level_before is not None:
            logger.setLevel(self._level_before)
            self._level_before = None
        if self._live is not None:
            self._live.stop()
            self._live = None
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=2)
            self._heartbeat = None

    # -- input ---------------------------------------------------------------------------------

    def progress(self, update: Progress) -> None:
        if self.quiet:
            return
        with self._lock:
            self._nodes[update.node or update.tier] = (update, self.clock())
        self._emit(update.to_json(), self._line(update))

    def retry(self, notice: Any) -> None:  # a providers.hyperstack_api.RetryNotice
        self._emit(notice.to_json(), f"retrying: {notice.describe()}")

    # -- output --------------------------------------------------------------------------------

    def _line(self, update: Progress, *, prefix: str = "") -> str:
        where = update.node or update.tier
        status = f" · provider: {update.provider_status}" if update.provider_status else ""
        return f"{where}: {prefix}{update.message}{status}"

    def _emit(self, data: dict[str, Any], text: str) -> None:
        with self._lock:
            now = self.clock()
            self._last_line_at = now
        if self.json_lines:
            out = json.dumps({"at_s": round(now - self.started, 1), **data})
        else:
            out = f"[{now - self.started:6.1f}s] {text}"
        # Written outside self._lock: the live view's refresh holds rich's lock while it reads
        # the nodes under self._lock, so holding both here in the other order could deadlock.
        live = self._live
        if live is not None:
            from rich.text import Text

            self._console.print(Text(out))  # above the live lines, which stay at the bottom
        else:
            with self._write_lock:
                self.stream.write(out + "\n")
                self.stream.flush()

    def _waiting(self) -> list[tuple[Progress, float]]:
        """The nodes still on their way, with their elapsed seconds as of now."""
        now = self.clock()
        with self._lock:
            return [(update, (update.elapsed_s or 0.0) + now - at) for update, at in self._nodes.values()
                    if update.state not in _SETTLED]

    def _beat(self) -> None:
        while not self._stop.wait(1.0):
            if self.clock() - self._last_line_at < HEARTBEAT_S:
                continue
            for update, elapsed_s in self._waiting():
                beat = {**update.to_json(), "event": "heartbeat", "elapsed_s": round(elapsed_s, 1)}
                self._emit(beat, self._line(update, prefix="still ") + f", {elapsed_s:.0f} s")
            with self._lock:
                self._last_line_at = self.clock()

    def __rich__(self) -> Any:
        """The live lines: one per node still on its way, its clock computed at each refresh."""
        from rich.spinner import Spinner
        from rich.table import Table

        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True)
        grid.add_column(no_wrap=True, overflow="ellipsis")
        for update, elapsed_s in self._waiting():
            where = update.node or update.tier
            spinner = self._spinners.setdefault(where, Spinner("dots"))
            # What matters first, so a narrow terminal cuts only the end of the message.
            status = f" · {update.provider_status}" if update.provider_status else ""
            grid.add_row(spinner, f"{where} · {elapsed_s:.0f} s{status} · {update.message}")
        return grid


class _RetryHandler(logging.Handler):
    """Hands the provider client's retry notices to the view; other records pass by."""

    def __init__(self, view: FleetProgressView) -> None:
        super().__init__(logging.INFO)
        self.view = view

    def emit(self, record: logging.LogRecord) -> None:
        notice = getattr(record, "spot_retry", None)
        if notice is not None:
            self.view.retry(notice)


def show_provider_retries(ctx: Any, *, json_lines: bool = False) -> None:
    """For a command outside the fleet's (``spot sample``, ``volumes``, ``cost reconcile``): each
    retry of a provider call is a line on stderr until the command ends, as in fleet commands."""
    ctx.with_resource(FleetProgressView(quiet=True, json_lines=json_lines))
