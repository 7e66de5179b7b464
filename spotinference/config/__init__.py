"""Settings: one TOML file plus SPOT_* environment overrides, validated into typed models."""

from .loader import ConfigSource, embedded_config_text, load_settings, locate_config
from .models import BudgetSettings, GatewaySettings, ProviderSettings, SimEngineSettings, SshSettings, Tier, VllmSettings
from .settings import Settings

__all__ = [
    "BudgetSettings",
    "ConfigSource",
    "GatewaySettings",
    "ProviderSettings",
    "Settings",
    "SshSettings",
    "Tier",
    "SimEngineSettings",
    "VllmSettings",
    "embedded_config_text",
    "load_settings",
    "locate_config",
]
