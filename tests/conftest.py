"""Every test runs with its own data directory and no config but what it writes itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

# tests.real_node_fleet: the session's shared real node (real_node_image, real_fleet,
# real_node_served), one fixture instance for every real-node module, which importing it into
# each module would not give.
pytest_plugins = ["tests.sshd", "tests.real_node_fleet"]

ROOT = Path(__file__).resolve().parents[1]
SPOT = Path(sys.executable).with_name("spot")


# Under pytest-xdist (`-n 2 --dist loadgroup`), what a test shares with others beyond its own
# tmp_path decides where it runs. A session fixture is made once per worker, so the real engines
# (vLLM for the chat and the pooling model, the vLLM a tier starts, the real node with its vLLM)
# would start on each worker, twice on two cores at once: their tests form one group, which runs on
# one worker in collection order (the ``last`` test, too, stays after the other users of its
# fixture). ``shares(NAME)`` names what a fixture cannot show (the README tour's default ports,
# the engine a fixture takes by name). Every other test keeps its module's worker, in order: a
# module fixture is made once per module, as in a serial run.
SHARED_BY_FIXTURE = {
    "vllm_engine": "real-engines",
    "vllm_pooling_engine": "real-engines",
    "vllm_installed": "real-engines",  # test_scale_to_zero_vllm.py: a tier's own vLLM
    "real_node_image": "real-engines",  # the real nodes (their address slots are reused at once)
    "real_fleet": "real-engines",
}


def xdist_group(item: pytest.Item) -> str:
    shared = {marker.args[0] for marker in item.iter_markers("shares")}
    shared |= {group for fixture, group in SHARED_BY_FIXTURE.items() if fixture in getattr(item, "fixturenames", ())}
    if len(shared) > 1:
        raise pytest.UsageError(f"{item.nodeid} shares {sorted(shared)}: one test can join one xdist group")
    return shared.pop() if shared else item.nodeid.split("::", 1)[0]


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the xdist_group markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test marked ``last("fixture")`` ends what the tests using that fixture share (the shared
    real node, which it terminates): it runs right after the last of them, not at the session's end."""
    for item in [item for item in items if item.get_closest_marker("last")]:
        fixture = item.get_closest_marker("last").args[0]
        items.remove(item)
        users = [i for i, other in enumerate(items) if fixture in getattr(other, "fixturenames", ())]
        items.insert(users[-1] + 1 if users else len(items), item)
    if hasattr(config, "workerinput"):  # an xdist worker
        for item in items:
            item.add_marker(pytest.mark.xdist_group(xdist_group(item)))


class _GroupsKept:
    """xdist's loadgroup carries each group as an ``@group`` suffix on the node id. pytest 9.2
    drops that suffix (pytest-xdist issue 1386; pyproject pins pytest below 9.2 until a fix is
    released): then every test would be spread alone, and vLLM would start on both workers at
    once. Stop before running anything rather than run that way. A plugin of its own, registered
    only where xdist is loaded: pytest refuses a hook it has no spec for (``-p no:xdist``)."""

    @staticmethod
    def pytest_xdist_node_collection_finished(node: object, ids: list[str]) -> None:
        ungrouped = [nodeid for nodeid in ids if "@" not in nodeid.rpartition("]")[2]]
        if ungrouped:
            pytest.exit(f"pytest {pytest.__version__} dropped xdist's group from {len(ungrouped)} node ids "
                        f"(e.g. {ungrouped[0]}; pytest-xdist issue 1386): install the test extra's pytest "
                        "(pip install -e '.[test]'), or run without -n", returncode=4)


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput") and config.getoption("dist", "no") != "no" and config.getoption("tx", None):
        if config.getoption("dist") != "loadgroup":
            raise pytest.UsageError("this suite runs in parallel with --dist loadgroup only (tests/conftest.py: "
                                    "tests sharing a real engine or the default ports run on one worker)")
        # The groups go out in collection order, not largest first: the real engines' group
        # (from tests/test_bench.py, the first module) starts at once, and the last units are
        # small modules, never one long test left alone at the end.
        config.option.loadscopereorder = False
        config.pluginmanager.register(_GroupsKept(), "spot-xdist-groups-kept")
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
