"""`spot publish DIR --serve`: the site over local HTTP, for a look before it is uploaded."""

from __future__ import annotations

import errno
import functools
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ..errors import PortTakenError


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        pass  # the library never prints; the CLI says where it serves


def server(directory: Path, host: str, port: int) -> ThreadingHTTPServer:
    """A server for ``directory`` bound to host:port (port 0: any free one); call serve_forever()."""
    handler = functools.partial(_Quiet, directory=str(directory))
    try:
        return ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortTakenError(f"port {port} on {host} is already in use", hint="choose another with --port") from None
        raise
