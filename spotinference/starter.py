"""`spot init`: write a starter config from one of the bundled examples."""

from __future__ import annotations

import os
from pathlib import Path

from .config import embedded_config_text
from .errors import InputError, SpotError

EXAMPLES = {
    "sim": "default.toml",  # the embedded default: emulated cloud and engines on this machine
    "hyperstack": "hyperstack.example.toml",
}


def write_starter_config(path: Path, *, example: str = "sim", force: bool = False) -> Path:
    if example not in EXAMPLES:
        raise InputError(f"unknown example {example!r} (expected one of: {', '.join(EXAMPLES)})")
    path = path.expanduser()
    if path.exists() and not force:
        raise InputError(f"{path} already exists; not overwriting it", hint="pass --force to replace it")
    text = embedded_config_text(EXAMPLES[example])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)  # never leave a half-written config behind
    except OSError as exc:
        raise SpotError(f"cannot write {path}: {exc.strerror}") from None
    return path
