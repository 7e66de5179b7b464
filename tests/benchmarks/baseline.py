"""An older commit's gateway, started beside this checkout's, so a benchmark compares them in one run.

"Before/after" figures taken minutes apart on these shared two-core machines differ by more than
the change being measured; run side by side, each client alternating both gateways, they share
the same load. ``BaselineGateway(ref)`` installs that commit's package (no dependencies: this
venv's are used, as the commits compared share them) into a private directory with pip, then
serves it with this interpreter and ``PYTHONPATH`` pointing there. Its data directory is its own,
migrated and keyed by the old code itself, so a newer schema never meets an older reader.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.servers import ServerProcess, clean_env, free_port

REPO = Path(__file__).resolve().parents[2]


class BaselineGateway:
    def __init__(self, ref: str, work: Path) -> None:
        self.ref = ref
        self.commit = _git("rev-parse", "--short", f"{ref}^{{commit}}").strip()
        self.work = work / f"baseline-{self.commit}"
        self.site = self.work / "site"
        self.home = self.work / "home"

    def install(self) -> None:
        source = self.work / "source"
        source.mkdir(parents=True)
        # `git archive` gives the commit's tree without touching this checkout or its worktrees.
        archive = subprocess.run(["git", "-C", str(REPO), "archive", self.commit], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(source)], input=archive.stdout, check=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                        "--target", str(self.site), str(source)], check=True)

    def _env(self) -> dict[str, str]:
        return clean_env(self.home, PYTHONPATH=str(self.site))

    def create_key(self) -> str:
        code = ("from pathlib import Path; from spotinference.keys import create_key; "
                "from spotinference.store import Store; "
                f"print(create_key(Store(Path({str(self.home)!r})), 'bench').key)")
        result = subprocess.run([sys.executable, "-c", code], env=self._env(), check=True, capture_output=True, text=True)
        return result.stdout.strip()

    def start(self, upstreams: dict[str, str], extra_env: dict[str, str] | None = None) -> tuple[ServerProcess, str]:
        port = free_port()
        command = [sys.executable, "-c", "from spotinference_cli.main import run; run()", "serve", "--port", str(port)]
        for model, url in upstreams.items():
            command += ["--upstream", f"{model}={url}"]
        url = f"http://127.0.0.1:{port}"
        server = ServerProcess(command, env={**self._env(), **(extra_env or {})},
                               log_path=self.work / f"gateway-{port}.log", health_url=f"{url}/health")
        return server.start(), url


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True).stdout
