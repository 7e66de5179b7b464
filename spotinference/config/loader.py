"""Find, read and validate the config file; turn every failure into one clear ConfigError."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import ConfigError
from .settings import Settings

EMBEDDED_DEFAULT = "default.toml"
SECRET_KEYS = {"api_key", "key_passphrase", "password"}
LOCAL_CONFIG = Path("spot.toml")


@dataclass(frozen=True)
class ConfigSource:
    """Where the configuration came from, for messages and `spot doctor`."""

    path: Path | None  # None: the embedded default
    how: str  # "--config", "SPOT_CONFIG", "./spot.toml" or "embedded default"

    @property
    def label(self) -> str:
        return f"embedded default (configs/{EMBEDDED_DEFAULT})" if self.path is None else str(self.path)


def locate_config(cli_path: Path | None = None) -> ConfigSource:
    """--config, else $SPOT_CONFIG, else ./spot.toml, else the embedded default."""
    if cli_path is not None:
        return ConfigSource(cli_path.expanduser(), "--config")
    env_path = os.environ.get("SPOT_CONFIG")
    if env_path:
        return ConfigSource(Path(env_path).expanduser(), "SPOT_CONFIG")
    if LOCAL_CONFIG.is_file():
        return ConfigSource(LOCAL_CONFIG.resolve(), "./spot.toml")
    return ConfigSource(None, "embedded default")


def embedded_config_text(name: str = EMBEDDED_DEFAULT) -> str:
    return resources.files("spotinference.configs").joinpath(name).read_text()


def read_toml(source: ConfigSource) -> dict[str, Any]:
    if source.path is None:
        text = embedded_config_text()
    else:
        try:
            text = source.path.read_text()
        except FileNotFoundError:
            raise ConfigError(
                f"config file {source.path} (from {source.how}) does not exist",
                hint="run `spot init` to write a starter config, or fix the path",
            ) from None
        except OSError as exc:
            raise ConfigError(f"config file {source.path} cannot be read: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source.label}: not valid TOML: {exc}") from None
    _refuse_plain_secrets(data, source)
    return data


def load_settings(cli_path: Path | None = None) -> tuple[Settings, ConfigSource]:
    source = locate_config(cli_path)
    data = read_toml(source)
    try:
        return Settings(**data), source
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source, data)) from None


def _refuse_plain_secrets(data: Any, source: ConfigSource, path: tuple[str, ...] = ()) -> None:
    if not isinstance(data, dict):
        return
    for key, value in data.items():
        here = (*path, str(key))
        if key in SECRET_KEYS:
            dotted = ".".join(here)
            raise ConfigError(
                f"{source.label}: {dotted} holds a secret in plain text; secrets are never read "
                "from the config file",
                hint=f"set {env_name(here)} in the environment, or {dotted}_file = \"/path/to/file\"",
            )
        _refuse_plain_secrets(value, source, here)


def env_name(loc: tuple[str | int, ...]) -> str:
    return "SPOT_" + "__".join(str(part).upper() for part in loc)


def _env_origin(loc: tuple[str | int, ...]) -> str | None:
    """The SPOT_* variable that set this value (or one of its parents), if any."""
    environ = {k.upper(): v for k, v in os.environ.items()}
    for end in range(len(loc), 0, -1):
        name = env_name(loc[:end])
        if name in environ:
            return name
    return None


def _expected(message: str) -> str:
    for prefix in ("Input should be ", "Value error, "):
        if message.startswith(prefix):
            message = message[len(prefix):]
            return message if prefix == "Value error, " else f"expected {message}"
    return message


def describe_validation_error(exc: ValidationError, source: ConfigSource, data: dict[str, Any]) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        key = ".".join(str(p) for p in loc)
        origin = _env_origin(loc)
        where = f"environment variable {origin}" if origin else source.label
        if error["type"] == "extra_forbidden":
            problems.append(f"{where}: unknown key {key!r}")
            continue
        if not loc:  # a whole-config check (fleet consistency) names its keys itself
            problems.append(f"{where}: {_expected(error['msg'])}")
            continue
        shown = "<hidden>" if any(str(p) in SECRET_KEYS for p in loc) else repr(error.get("input"))
        if error["type"] == "missing":
            problems.append(f"{where}: {key} is required but missing")
        else:
            problems.append(f"{where}: {key} = {shown} is invalid: {_expected(error['msg'])}")
    head = problems[0]
    if len(problems) > 1:
        head += f" (and {len(problems) - 1} more: " + "; ".join(p.split(': ', 1)[1] for p in problems[1:]) + ")"
    return head
