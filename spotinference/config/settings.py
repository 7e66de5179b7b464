"""The root settings object: TOML file values, overridden by ``SPOT_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .models import TIER_NAME, BudgetSettings, GatewaySettings, ProviderSettings, SshSettings, StoreSettings, Tier, _default_home


class Settings(BaseSettings):
    """Everything spot reads from its config file and environment.

    Precedence, highest first: ``SPOT_*`` environment variables (nested keys joined by ``__``,
    e.g. ``SPOT_GATEWAY__PORT=9000``), the TOML file, built-in defaults.
    """

    model_config = SettingsConfigDict(
        env_prefix="SPOT_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    home: Path = Field(default_factory=_default_home)
    gateway: GatewaySettings = GatewaySettings()
    ssh: SshSettings = SshSettings()
    providers: dict[str, ProviderSettings] = {}
    tiers: dict[str, Tier] = {}
    budget: BudgetSettings = BudgetSettings()
    store: StoreSettings = StoreSettings()

    @field_validator("home")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("tiers", mode="before")
    @classmethod
    def _name_tiers(cls, value: Any) -> Any:
        # A tier's name is its table key; copy it in so a Tier stands on its own.
        if isinstance(value, dict):
            return {k: ({**v, "name": k} if isinstance(v, dict) else v) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _fleet_is_consistent(self) -> Settings:
        for name, tier in self.tiers.items():
            if not TIER_NAME.match(name):
                raise ValueError(
                    f"tier name {name!r} is invalid: expected lowercase letters, digits, '-' or '_', "
                    "starting with a letter, at most 40 characters"
                )
            if tier.provider not in self.providers:
                known = ", ".join(sorted(self.providers)) or "none configured"
                raise ValueError(
                    f"tiers.{name}.provider = {tier.provider!r} is not a configured provider "
                    f"(expected one of: {known})"
                )
            if tier.fallback is not None:
                if tier.fallback == name:
                    raise ValueError(f"tiers.{name}.fallback names the tier itself")
                if tier.fallback not in self.tiers:
                    raise ValueError(
                        f"tiers.{name}.fallback = {tier.fallback!r} is not a configured tier "
                        f"(expected one of: {', '.join(sorted(set(self.tiers) - {name}))})"
                    )
        self._check_fallback_cycles()
        self._check_model_routing()
        return self

    def _check_fallback_cycles(self) -> None:
        for start in self.tiers:
            seen = [start]
            current = self.tiers[start].fallback
            while current is not None:
                if current in seen:
                    raise ValueError(f"tier fallbacks form a cycle: {' -> '.join([*seen, current])}")
                seen.append(current)
                current = self.tiers[current].fallback

    def _check_model_routing(self) -> None:
        # Requests are routed by model name, so each model must have one primary tier; a fallback
        # tier repeats its primary's model on purpose and is not a second primary.
        fallbacks = {t.fallback for t in self.tiers.values() if t.fallback}
        primaries: dict[str, str] = {}
        for name, tier in self.tiers.items():
            if name in fallbacks:
                continue
            other = primaries.setdefault(tier.model_name, name)
            if other != name:
                raise ValueError(
                    f"model {tier.model_name!r} is served by two tiers ({other}, {name}): "
                    "expected one tier per model, with any other as its fallback"
                )

    def tier_for_model(self, model: str) -> Tier | None:
        fallbacks = {t.fallback for t in self.tiers.values() if t.fallback}
        for name, tier in self.tiers.items():
            if tier.model_name == model and name not in fallbacks:
                return tier
        return None

    @property
    def database_path(self) -> Path:
        return self.home / "spot.duckdb"

    @property
    def spool_dir(self) -> Path:
        return self.home / "spool"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives through init_settings (see loader.load_settings), below the
        # environment, so that every file value can be overridden by a SPOT_* variable.
        return (env_settings, init_settings)
