"""Every test runs with its own data directory and no config but what it writes itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests import xdist_groups

# tests.real_node_fleet: the session's shared real node (real_node_image, real_fleet,
# real_node_served), one fixture instance for every real-node module, which importing it into
# each module would not give.
pytest_plugins = ["tests.sshd", "tests.real_node_fleet"]

ROOT = Path(__file__).resolve().parents[1]
SPOT = Path(sys.executable).with_name("spot")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test marked ``last("fixture")`` ends what the tests using that fixture share (the shared
    real node, which it terminates): it runs right after the last of them, not at the session's end."""
    for item in [item for item in items if item.get_closest_marker("last")]:
        fixture = item.get_closest_marker("last").args[0]
        items.remove(item)
        users = [i for i, other in enumerate(items) if fixture in getattr(other, "fixturenames", ())]
        items.insert(users[-1] + 1 if users else len(items), item)


def pytest_configure(config: pytest.Config) -> None:
    # `pytest -n 2` (pytest-xdist): tests sharing a real engine or the default ports share a worker.
    xdist_groups.register(config)
    # A suite started in the background of a non-interactive shell inherits SIGINT ignored, and so
    # would every `spot` it starts (spot keeps an ignored SIGINT ignored, as nohup'd programs must).
    # The tests that press Ctrl-C stand for a user at a terminal, whose SIGINT is not ignored.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Clear SPOT_*, point SPOT_HOME at a fresh directory, run from an empty working directory."""
    for name in list(os.environ):
        if name.upper().startswith("SPOT_"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    monkeypatch.setenv("SPOT_HOME", str(home))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # so a ./spot.toml in the checkout is never picked up
    return home


@pytest.fixture
def home(isolated: Path) -> Path:
    return isolated


def run_spot(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed `spot` console script as a user would, in the test's environment."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run(
        [str(SPOT), *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=120
    )


@pytest.fixture
def spot():
    return run_spot


# -- engines and gateways, started once per session ------------------------------------------

@pytest.fixture(scope="session")
def sim_engine(tmp_path_factory: pytest.TempPathFactory):
    """`spot sim engine` serving tiny-chat, shared by the session."""
    from tests.servers import start_sim_engine

    server, url = start_sim_engine(tmp_path_factory.mktemp("sim-engine"))
    yield url
    server.stop()


@pytest.fixture(scope="session")
def vllm_engine():
    """Real vLLM on the CPU serving tiny-chat (installed and built on first use; ~6 min cold).

    TEST_VLLM_URL=http://127.0.0.1:18000 reuses one already running (started by hand with
    `python -m tests.engines.real_vllm serve --port 18000`) to iterate faster.
    """
    from tests.engines.real_vllm import VllmServer, build_tiny_model, ensure_vllm_installed

    if os.environ.get("TEST_VLLM_URL"):
        yield os.environ["TEST_VLLM_URL"].rstrip("/")
        return
    ensure_vllm_installed()
    build_tiny_model()
    with VllmServer() as server:
        yield server.base_url


@pytest.fixture(scope="session")
def vllm_pooling_engine():
    """Real vLLM on the CPU serving the tiny pooling model `tiny-embed` (embeddings, score,
    rerank; no generation routes). Built on first use (~10 s), then ~2 min to start on 2 cores.

    TEST_VLLM_POOLING_URL reuses one already running (started by hand with
    `python -m tests.engines.real_vllm serve --embed --port 18001`).
    """
    from tests.engines.real_vllm import VllmServer, build_tiny_model, ensure_vllm_installed

    if os.environ.get("TEST_VLLM_POOLING_URL"):
        yield os.environ["TEST_VLLM_POOLING_URL"].rstrip("/")
        return
    ensure_vllm_installed()
    build_tiny_model(kind="embed")
    with VllmServer.pooling() as server:
        yield server.base_url


@pytest.fixture(scope="session")
def sim_pooling_engine(tmp_path_factory: pytest.TempPathFactory):
    """`spot sim engine` serving tiny-embed as an embedding model (the runner vLLM calls pooling)."""
    from tests.servers import SPOT, ServerProcess, clean_env, free_port

    workdir = tmp_path_factory.mktemp("sim-pooling")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = ServerProcess(
        [str(SPOT), "sim", "engine", "--port", str(port), "--model", "tiny-embed", "--seed", "7",
         "--max-model-len", "512"],
        # `spot sim engine` has no --runner flag: the engine reads the runner from here.
        env=clean_env(workdir / "sim-home", SPOT_SIM_ENGINE_RUNNER="pooling"),
        log_path=workdir / f"sim-{port}.log",
        health_url=f"{url}/health",
    ).start()
    yield url
    server.stop()



@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server (tests/postgres_server.py), one per session: the DuckLake catalog
    of the multi-host tests. Each test takes a database of its own with ``create_database``."""
    from tests.postgres_server import start_postgres

    server = start_postgres()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="session")
def lake_venv():
    """The venv with `spotinference[ducklake]` (duckdb 1.5.5 and its extensions): tests/lake_env.py."""
    from tests.lake_env import lake_env

    return lake_env()
