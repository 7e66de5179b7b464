"""What the global options decide, handed to every command through Typer's context."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from spotinference.config import ConfigSource, Settings
    from spotinference.store import Store


@dataclass
class CliState:
    config_path: Path | None = None
    _loaded: tuple[Settings, ConfigSource] | None = None

    def load(self) -> tuple[Settings, ConfigSource]:
        if self._loaded is None:
            from spotinference.config import load_settings

            self._loaded = load_settings(self.config_path)
        return self._loaded

    @property
    def settings(self) -> Settings:
        return self.load()[0]

    def store(self) -> Store:
        from spotinference.store import Store

        return Store.from_settings(self.settings)
