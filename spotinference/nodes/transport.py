"""The Transport interface: everything spot does on a node goes through these few calls.

Commands are shell command lines run by ``/bin/sh -c`` on the node (SSH's own convention), so
callers quote with ``shlex.quote``. Paths are the node's absolute paths.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import NodeCommandError


@dataclass(frozen=True, slots=True)
class CommandResult:
    command: str
    exit_status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


class Transport(ABC):
    #: the node's name, used in every error message
    node: str

    @abstractmethod
    def run(
        self,
        command: str,
        *,
        timeout_s: float | None = None,
        check: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """Run ``command`` and wait for it. ``check``: a non-zero exit raises NodeCommandError
        (with the tail of stderr). Past ``timeout_s`` (default: the transport's command timeout)
        the command is killed and NodeTimeoutError raised."""

    @abstractmethod
    def put_file(self, path: str, data: bytes, *, mode: int = 0o644) -> None:
        """Write ``data`` to ``path`` atomically (a temporary file renamed over it), creating
        parent directories."""

    def put_local_file(self, path: str, local: Path, *, mode: int = 0o644) -> None:
        """Copy the file ``local`` (on this machine) to ``path``, as put_file does. Transports that
        can stream (SSH) override this, so a model's multi-GB shards never sit in memory."""
        self.put_file(path, local.read_bytes(), mode=mode)

    @abstractmethod
    def read_file(self, path: str) -> bytes | None:
        """The file's bytes, or None when it does not exist."""

    @abstractmethod
    def follow(self, command: str) -> Iterator[str]:
        """Run a long-lived command (``journalctl -fu …``, ``tail -F …``) and yield its output
        line by line (without the newline) until it ends; closing the iterator stops it."""

    def close(self) -> None:
        """Release the connection."""

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def command_error(node: str, result: CommandResult, *, tail_chars: int = 2000) -> NodeCommandError:
    """The NodeCommandError for a failed ``result``, shared by every transport so messages match:
    one line naming the node, the command and its status, ending with stderr's last line."""
    tail = result.stderr[-tail_chars:]
    last = next((line.strip() for line in reversed(tail.splitlines()) if line.strip()), "")
    shown = result.command if len(result.command) <= 80 else result.command[:77] + "..."
    message = f"node {node}: command {shown!r} exited {result.exit_status}"
    return NodeCommandError(f"{message}: {last}" if last else message, node=node, command=result.command,
                            exit_status=result.exit_status, stderr=tail)
