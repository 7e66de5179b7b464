"""The local transport: a "node" that is this machine (emulated nodes of `spot sim cloud`).

Behaves like the SSH transport seen from the caller: commands run under ``/bin/sh -c``, each in
its own process group so a timeout or a closed ``follow`` kills everything the command started
(not only the shell), and files are replaced atomically.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Mapping

from .errors import NodeError, NodeTimeoutError
from .transport import CommandResult, Transport, command_error

# How long a follow()ed command gets to exit on SIGTERM before SIGKILL.
_TERM_GRACE_S = 2.0


class LocalTransport(Transport):
    def __init__(self, node: str, *, command_timeout_s: float = 600) -> None:
        self.node = node
        self.command_timeout_s = command_timeout_s

    def run(
        self,
        command: str,
        *,
        timeout_s: float | None = None,
        check: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        timeout = self.command_timeout_s if timeout_s is None else timeout_s
        proc = self._spawn(command, env=env, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc, signal.SIGKILL)
            # Not communicate(): a daemon that left the group could hold the pipes open forever.
            proc.wait()
            _close_pipes(proc)
            raise NodeTimeoutError(f"node {self.node}: command timed out after {timeout:g} s and was killed: "
                                   f"{_short(command)}", node=self.node,
                                   hint="raise the timeout if the command is just slow") from None
        result = CommandResult(command=command, exit_status=proc.returncode,
                               stdout=out.decode(errors="replace"), stderr=err.decode(errors="replace"))
        if check and not result.ok:
            raise command_error(self.node, result)
        return result

    def put_file(self, path: str, data: bytes, *, mode: int = 0o644) -> None:
        directory, name = os.path.split(os.path.abspath(path))
        try:
            os.makedirs(directory, exist_ok=True)
            # Same directory, so os.replace is a rename within one filesystem: readers see the old
            # file or the new one, never half of it.
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
        except OSError as exc:
            raise self._file_error("write", path, exc) from None
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
                os.fchmod(out.fileno(), mode)  # explicit, so the umask does not decide
            os.replace(tmp, path)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise self._file_error("write", path, exc) from None

    def read_file(self, path: str) -> bytes | None:
        try:
            with open(path, "rb") as src:
                return src.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._file_error("read", path, exc) from None

    def follow(self, command: str) -> Iterator[str]:
        # stderr joins stdout, as it does through the SSH transport's pty.
        proc = self._spawn(command, env=None, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        try:
            for raw in proc.stdout:
                yield raw.rstrip(b"\r\n").decode(errors="replace")
        finally:
            # Reached on normal end and when the caller closes the generator (GeneratorExit).
            if proc.poll() is None:
                _kill_group(proc, signal.SIGTERM)
                try:
                    proc.wait(timeout=_TERM_GRACE_S)
                except subprocess.TimeoutExpired:
                    _kill_group(proc, signal.SIGKILL)
            # Whatever the command left behind in its group goes too.
            _kill_group(proc, signal.SIGKILL)
            proc.wait()
            _close_pipes(proc)

    def _spawn(self, command: str, *, env: Mapping[str, str] | None, stderr: int) -> subprocess.Popen[bytes]:
        full_env = {**os.environ, **env} if env else None
        try:
            return subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=stderr, env=full_env, start_new_session=True)
        except OSError as exc:
            raise NodeError(f"node {self.node}: cannot start /bin/sh: {exc.strerror}", node=self.node) from None

    def _file_error(self, verb: str, path: str, exc: OSError) -> NodeError:
        return NodeError(f"node {self.node}: cannot {verb} {path}: {exc.strerror or exc}", node=self.node)


def _kill_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    # start_new_session made the shell a group leader: its pid is the group's id.
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _close_pipes(proc: subprocess.Popen[bytes]) -> None:
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def _short(command: str) -> str:
    return command if len(command) <= 80 else command[:77] + "..."
