"""How spot starts a Python child process: the installed package, never the working directory.

``python -m X`` puts the current directory first on ``sys.path``. Run from a checkout of spot
after a non-editable install, that imports the source tree (where ``spotinference.queries`` does
not exist: it is installed from ``queries/``) instead of what is installed. ``-P`` (Python 3.11+)
leaves the current directory out, so every child runs the same code as its parent.
"""

from __future__ import annotations

import sys


def python_module(module: str) -> list[str]:
    """argv that runs ``module`` with this interpreter, importing only what is installed."""
    return [sys.executable, "-P", "-m", module]
