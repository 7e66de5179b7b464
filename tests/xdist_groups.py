"""Running the suite in parallel with pytest-xdist (``pytest -n 2``): which tests share a worker.

A session fixture is made once per worker, so the real engines (vLLM for the chat and the
pooling model, the vLLM a tier starts, the real nodes with theirs) would start on each worker,
twice on two cores at once: their tests form one group, run by one worker in collection order
(so the ``last`` test still follows the other users of its fixture). ``@pytest.mark.shares(NAME)``
names what a fixture cannot show (the README tour's default ports, an engine a fixture takes by
name). Every other test keeps its module's worker, in order: a module fixture is made once per
module, as in a serial run.

xdist's own ``--dist loadgroup`` cannot carry this: it appends ``@group`` to each test's node id,
which pytest 9.2 no longer lets a plugin change (pytest-xdist issue 1386: the groups are
silently ignored). So each worker writes its collection's groups to a file the controller names,
and the controller's scheduler (xdist's scope scheduler, one scope per group) reads them.
Registered by conftest.py when pytest-xdist is installed.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

SHARED_BY_FIXTURE = {
    "vllm_engine": "real-engines",
    "vllm_pooling_engine": "real-engines",
    "vllm_installed": "real-engines",  # test_scale_to_zero_vllm.py: a tier's own vLLM
    "real_node_image": "real-engines",  # the real nodes (a freed address slot is taken again at once)
    "real_fleet": "real-engines",
}
KEY = "spot_groups_dir"


def group_of(item: pytest.Item) -> str:
    shared = {marker.args[0] for marker in item.iter_markers("shares")}
    shared |= {group for fixture, group in SHARED_BY_FIXTURE.items() if fixture in getattr(item, "fixturenames", ())}
    if len(shared) > 1:
        raise pytest.UsageError(f"{item.nodeid} shares {sorted(shared)}: a test can be in one group only")
    return shared.pop() if shared else item.nodeid.split("::", 1)[0]


class Controller:
    """The controller's side: refuses the modes that ignore groups, schedules by group."""

    def __init__(self, config: pytest.Config) -> None:
        if config.getoption("dist") not in ("load", "loadgroup"):
            raise pytest.UsageError(f"--dist {config.getoption('dist')}: this suite runs in parallel as "
                                    "`pytest -n N` only (tests/xdist_groups.py: tests sharing a real engine "
                                    "or the default ports run on one worker)")
        self.dir = Path(tempfile.mkdtemp(prefix="spot-xdist-groups-"))

    def pytest_configure_node(self, node) -> None:
        node.workerinput[KEY] = str(self.dir)

    def pytest_xdist_make_scheduler(self, config: pytest.Config, log):
        from xdist.scheduler import LoadScopeScheduling

        groups_dir = self.dir

        class GroupScheduling(LoadScopeScheduling):
            """xdist's scope scheduler with one scope per group, in collection order (the real
            engines' group, from tests/test_bench.py, starts at once; the last units are small
            modules, never one long test left alone at the end)."""

            groups: dict[str, str] | None = None

            def _split_scope(self, nodeid: str) -> str:
                if self.groups is None:  # every worker has finished collecting (and so written)
                    self.groups = {}
                    for path in sorted(groups_dir.glob("*.json")):
                        self.groups.update(json.loads(path.read_text()))
                return self.groups.get(nodeid) or nodeid.split("::", 1)[0]

        config.option.loadscopereorder = False
        return GroupScheduling(config, log)

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        for path in self.dir.glob("*.json"):
            path.unlink()
        self.dir.rmdir()


class Worker:
    """A worker's side: writes each test's group once it has collected (before it reports its
    collection, which the controller waits for before scheduling)."""

    @pytest.hookimpl(trylast=True)  # after conftest's ordering hook
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        groups = {item.nodeid: group_of(item) for item in items}
        target = Path(config.workerinput[KEY]) / f"{config.workerinput['workerid']}.json"
        partial = target.with_suffix(".partial")
        partial.write_text(json.dumps(groups))
        partial.rename(target)


def register(config: pytest.Config) -> None:
    if not config.pluginmanager.hasplugin("xdist"):
        return
    if hasattr(config, "workerinput"):
        if KEY in config.workerinput:
            config.pluginmanager.register(Worker(), "spot-xdist-groups-worker")
    elif config.getoption("dist", "no") != "no" and config.getoption("tx", None):
        config.pluginmanager.register(Controller(config), "spot-xdist-groups")
