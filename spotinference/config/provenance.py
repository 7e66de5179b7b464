"""Where each setting's value came from: a SPOT_* variable, the config file, a secret file, or the default.

Computed, not guessed: the environment's share is what pydantic-settings' own environment source
reads (the same source `Settings` merges), the file's share is the TOML that was loaded, and
everything else is a default. Secrets are never returned, only whether they are set and from where.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic_settings import EnvSettingsSource

from .loader import ConfigSource, env_name, locate_config, read_toml
from .settings import Settings

MASK = "***"
# Values masked by their key's name too: a token in vllm.env (HF_TOKEN) is as secret as a SecretStr.
SECRET_NAME = re.compile(r"token|secret|passw|passphrase|api_?key|credential|private", re.IGNORECASE)
# The secrets a `*_file` key can fill in (models.py reads the file when the secret itself is unset).
SECRET_FILES = {"api_key": "api_key_file", "key_passphrase": "key_passphrase_file", "operator_token": "operator_token_file"}


@dataclass(frozen=True)
class Origin:
    """One setting: its dotted key, its value (a secret only as MASK), and where the value came from."""

    key: str
    value: Any
    source: str  # "env", "file", "secret file" or "default"
    where: str  # the variable ($SPOT_...), the config file, the secret file's path, or "default"
    secret: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "value": self.value, "from": self.source, "where": self.where, "secret": self.secret}


def explain_settings(cli_path: Path | None = None) -> tuple[Settings, ConfigSource, list[Origin]]:
    """Load the settings as every command does, and say where each value came from."""
    from .loader import load_settings

    settings, source = load_settings(cli_path)
    return settings, source, origins(settings, source, read_toml(locate_config(cli_path)))


def origins(settings: Settings, source: ConfigSource, file_data: dict[str, Any]) -> list[Origin]:
    from_env = EnvSettingsSource(Settings)()
    merged = settings.model_dump(mode="python")
    return [_origin(path, value, merged, source, file_data, from_env) for path, value in _leaves(settings, ())]


def _leaves(value: Any, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], Any]]:
    if isinstance(value, BaseModel):
        found = []
        for name in type(value).model_fields:
            found += _leaves(getattr(value, name), (*path, name))
        return found
    if isinstance(value, dict) and value:
        found = []
        for key, item in value.items():
            found += _leaves(item, (*path, str(key)))
        return found
    return [(path, value)]


def _lookup(data: Any, path: tuple[str, ...]) -> tuple[bool, Any]:
    """Whether ``path`` is in a nested dict (keys compared case-insensitively, as the environment's are)."""
    for part in path:
        if not isinstance(data, dict):
            return False, None
        match = next((k for k in data if str(k).lower() == part.lower()), None)
        if match is None:
            return False, None
        data = data[match]
    return True, data


def _env_variable(path: tuple[str, ...]) -> str:
    """The SPOT_* variable that carried this key: its own, or a parent's holding JSON."""
    environ = {k.upper() for k in os.environ}
    for end in range(len(path), 0, -1):
        if env_name(path[:end]) in environ:
            return env_name(path[:end])
    return env_name(path)


def _origin(path: tuple[str, ...], value: Any, merged: dict[str, Any], source: ConfigSource,
            file_data: dict[str, Any], from_env: dict[str, Any]) -> Origin:
    key = ".".join(path)
    secret = isinstance(value, SecretStr) or path[-1] in SECRET_FILES or (
        bool(SECRET_NAME.search(path[-1])) and not path[-1].endswith("_file"))
    shown = MASK if secret and value is not None else _shown(value)
    if _lookup(from_env, path)[0]:
        return Origin(key, shown, "env", f"${_env_variable(path)}", secret)
    if _lookup(file_data, path)[0]:
        return Origin(key, shown, "file", source.label, secret)
    if path[-1] in SECRET_FILES and value is not None:
        file_key = (*path[:-1], SECRET_FILES[path[-1]])
        found, file_path = _lookup(merged, file_key)
        if found and file_path is not None:
            return Origin(key, shown, "secret file", f"{Path(file_path).expanduser()} ({'.'.join(file_key)})", secret)
    if path[0] == "tiers" and path[-1] == "name" and len(path) == 3:  # copied from the tier's own key
        if _lookup(file_data, path[:2])[0]:
            return Origin(key, shown, "file", f"{source.label} ([tiers.{path[1]}])", secret)
        defining = sorted(n for n in (k.upper() for k in os.environ) if n.startswith(env_name(path[:2])))
        if defining:  # a tier made only of SPOT_TIERS__NAME__* variables
            return Origin(key, shown, "env", f"${defining[0]}", secret)
    return Origin(key, shown, "default", "default", secret)


def _shown(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return MASK
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, tuple | list):
        return [_shown(v) for v in value]
    if isinstance(value, dict):  # an empty map (a non-empty one is split into its keys)
        return {}
    return value


@dataclass(frozen=True)
class EnvSetting:
    """A SPOT_* variable the settings in effect read, and whether it carries a secret."""

    name: str  # as spelt in the environment
    value: str = field(repr=False)
    secret: bool
    keys: tuple[str, ...]  # the settings it set


def environment_in_effect(found: list[Origin]) -> list[EnvSetting]:
    """The SPOT_* variables that set a value in ``found`` (from :func:`explain_settings`), by name."""
    spelt = {name.upper(): name for name in os.environ}
    keys: dict[str, list[str]] = {}
    secret: dict[str, bool] = {}
    for origin in found:
        if origin.source != "env":
            continue
        variable = origin.where.removeprefix("$")
        keys.setdefault(variable, []).append(origin.key)
        secret[variable] = secret.get(variable, False) or origin.secret
    return [EnvSetting(spelt[v], os.environ[spelt[v]], secret[v], tuple(keys[v])) for v in sorted(keys) if v in spelt]
