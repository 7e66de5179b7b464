"""Errors from reaching or driving a node.

    SpotError
    └── NodeError                     exit 1   HTTP 502   something on a node went wrong
        ├── NodeUnreachableError      exit 6   HTTP 503   could not connect or authenticate
        ├── HostKeyChangedError       exit 6   HTTP 502   the node's host key differs from the pinned one
        ├── NodeTimeoutError          exit 6   HTTP 504   a command ran past its timeout
        └── NodeCommandError          exit 1   HTTP 502   a command exited non-zero
"""

from __future__ import annotations

from ..errors import SpotError


class NodeError(SpotError):
    http_status = 502

    def __init__(self, message: str, *, node: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.node = node


class NodeUnreachableError(NodeError):
    exit_code = 6
    http_status = 503


class HostKeyChangedError(NodeError):
    exit_code = 6


class NodeTimeoutError(NodeError):
    exit_code = 6
    http_status = 504


class NodeCommandError(NodeError):
    def __init__(self, message: str, *, node: str, command: str, exit_status: int, stderr: str) -> None:
        super().__init__(message, node=node)
        self.command = command
        self.exit_status = exit_status
        self.stderr = stderr
