"""Real servers for tests: the simulated engine, the gateway, each a process on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

SPOT = Path(sys.executable).with_name("spot")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """A server started in its own process group, stopped with everything it spawned."""

    def __init__(self, command: list[str], *, env: dict[str, str], log_path: Path, health_url: str) -> None:
        self.command = command
        self.env = env
        self.log_path = log_path
        self.health_url = health_url
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60.0) -> ServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.command[:4]} exited {self.proc.returncode}: {self.log_tail()}")
            try:
                if httpx.get(self.health_url, timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.command[:4]} not healthy after {timeout_s} s: {self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SPOT_")}
    env["SPOT_HOME"] = str(home)
    env.update(extra)
    return env


def operator_headers(home: Path) -> dict[str, str]:
    """What reads a gateway's /metrics and /health detail: the operator token `spot serve` wrote
    into its home (gateway.operator_token_file's default)."""
    return {"Authorization": f"Bearer {(home / 'operator-token').read_text().strip()}"}


def start_sim_engine(workdir: Path, *, model: str = "tiny-chat", extra: list[str] | None = None) -> tuple[ServerProcess, str]:
    port = free_port()
    command = [str(SPOT), "sim", "engine", "--port", str(port), "--model", model, "--seed", "7", *(extra or [])]
    url = f"http://127.0.0.1:{port}"
    server = ServerProcess(command, env=clean_env(workdir / "sim-home"), log_path=workdir / f"sim-{port}.log",
                           health_url=f"{url}/health")
    return server.start(), url


def start_gateway(home: Path, upstreams: dict[str, str], *, extra_env: dict[str, str] | None = None) -> tuple[ServerProcess, str]:
    port = free_port()
    command = [str(SPOT), "serve", "--port", str(port)]
    for model, url in upstreams.items():
        command += ["--upstream", f"{model}={url}"]
    url = f"http://127.0.0.1:{port}"
    server = ServerProcess(command, env=clean_env(home, **(extra_env or {})), log_path=home / f"gateway-{port}.log",
                           health_url=f"{url}/health")
    return server.start(), url


def start_sim_cloud(tmp_dir: Path, *extra_flags: str, port: int | None = None) -> tuple[ServerProcess, str]:
    """`spot sim cloud` with its state in ``tmp_dir/sim-cloud`` (unless a --state-dir is among the flags).

    Returns the server and its root URL: the Hyperstack API is at ``url + "/v1"``, the admin API
    at ``url + "/_sim"``. Pass the same ``tmp_dir`` again to restart it on the same state.
    """
    port = port or free_port()
    command = [str(SPOT), "sim", "cloud", "--port", str(port), "--state-dir", str(tmp_dir / "sim-cloud"),
               *extra_flags]
    url = f"http://127.0.0.1:{port}"
    server = ServerProcess(command, env=clean_env(tmp_dir / "sim-cloud-home"),
                           log_path=tmp_dir / f"sim-cloud-{port}.log", health_url=f"{url}/v1/billing/alive")
    return server.start(), url


def dechunk(data: bytes) -> bytes:
    """The body of an HTTP/1.1 chunked transfer (what follows the head), up to its last chunk."""
    parts = []
    while True:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return b"".join(parts)
        parts.append(rest[:size])
        data = rest[size + 2:]
