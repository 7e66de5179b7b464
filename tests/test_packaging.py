"""A non-editable install works on its own, outside the checkout."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import ROOT


def test_every_package_directory_is_listed_for_installation() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapping = config["package-dir"]
    found = set()
    for package, folder in mapping.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            relative = init.parent.relative_to(base).parts
            found.add(".".join((package, *relative)))
    assert found == listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"


@pytest.mark.slow
@pytest.mark.shares("default-ports")  # its `spot demo` takes 8780 and 8000 when they are free
def test_pip_install_into_a_fresh_venv_gives_a_working_spot(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", str(ROOT)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert install.returncode == 0, install.stderr

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env["SPOT_HOME"] = str(tmp_path / "home")

    def spot(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(venv / "bin" / "spot"), *args], capture_output=True, text=True, env=env, cwd=outside)

    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import spotinference, spotinference_cli; print(spotinference.__file__, spotinference_cli.__file__)"],
        capture_output=True, text=True, env=env, cwd=outside, check=True,
    ).stdout
    assert str(ROOT) not in where and str(venv) in where

    assert spot("--version").returncode == 0
    doctor = spot("doctor", "--json")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert re.match(r"\d+ report quer(y|ies), \d+ migrations bundled", checks["installation"]["detail"])
    assert checks["config"]["detail"].startswith("embedded default")  # configs/ found in the wheel
    status = json.loads(spot("db", "status", "--json").stdout)  # runs queries/db_tables.sql
    assert status["version"] == status["latest"] and status["version"] >= 4 and any(t["table_name"] == "requests" for t in status["tables"])
    init = spot("init", "--example", "hyperstack")
    assert init.returncode == 0 and (outside / "spot.toml").read_text().startswith("# spotinference: a real Hyperstack")

    # The README's first command is a non-editable install, then `spot demo` from the checkout: every
    # process the demo starts (gateway, flusher, sampler, emulator, engines) must run the installed
    # package, not the source tree in the working directory (which has no spotinference.queries).
    env["SPOT_HOME"] = str(tmp_path / "demo-home")
    demo = subprocess.run([str(venv / "bin" / "spot"), "demo", "--json", "--asleep-seconds", "2"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert demo.returncode == 0, demo.stderr[-3000:]
    for failure in ("No module named", "could not be read", "Traceback", "internal error"):
        assert failure not in demo.stderr + demo.stdout, demo.stderr[-3000:]
    assert json.loads(demo.stdout)["observable"] is True


def test_the_readme_quotes_the_headline_queries_verbatim() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in ("spend.sql", "cost_per_mtok.sql"):
        text = (ROOT / "queries" / name).read_text().rstrip("\n")
        assert f"```sql\n{text}\n```" in readme, f"README's copy of queries/{name} is out of date"
