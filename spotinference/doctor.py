"""`spot doctor`: the checks that tell an operator whether spot can work here, each with its fix."""

from __future__ import annotations

import os
import stat
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from .config import ConfigSource, Settings, load_settings, locate_config
from .errors import SpotError
from .reports import available_queries
from .store import Store
from .store.migrations import bundled_migrations


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def run_checks(config_path: Path | None = None) -> list[Check]:
    checks = [check_bundled_files()]
    try:
        settings, source = load_settings(config_path)
    except SpotError as exc:
        source = locate_config(config_path)
        checks.append(Check("config", False, str(exc), exc.hint or f"fix {source.label}"))
        return checks
    checks.append(check_config(settings, source))
    checks.append(check_data_dir(settings.home))
    checks.append(check_database(settings.home))
    checks.append(check_sampler(settings))
    checks.extend(check_provider_credentials(settings))
    checks.append(check_ssh_key(settings))
    return checks


def check_bundled_files() -> Check:
    try:
        queries, migrations = available_queries(), bundled_migrations()
    except (OSError, SpotError) as exc:
        return Check("installation", False, f"bundled files missing: {exc}", "reinstall spotinference")
    return Check(
        "installation",
        True,
        f"{len(queries)} report quer{'y' if len(queries) == 1 else 'ies'}, "
        f"{len(migrations)} migration{'' if len(migrations) == 1 else 's'} bundled",
    )


def check_config(settings: Settings, source: ConfigSource) -> Check:
    tiers = ", ".join(sorted(settings.tiers)) or "no tiers"
    origin = source.label if source.path is None else f"{source.label} (from {source.how})"
    return Check("config", True, f"{origin}: tiers {tiers}")


def check_data_dir(home: Path) -> Check:
    fix = "set SPOT_HOME (or `home` in the config) to a directory you can write"
    try:
        home.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=home, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Check("data directory", False, f"{home}: not writable ({exc.strerror})", fix)
    return Check("data directory", True, str(home))


def check_database(home: Path) -> Check:
    try:
        store = Store(home)
        applied = store.migrate()
        status = store.schema_status()
        waiting, rejected = store.spool_files()
    except SpotError as exc:
        return Check("database", False, str(exc), exc.hint)
    detail = f"schema v{status.version} of {status.latest}"
    if applied:
        detail += f" (just applied {len(applied)} migration{'s' if len(applied) > 1 else ''})"
    detail += f", {waiting} spool segment{'s' if waiting != 1 else ''} waiting"
    if rejected:
        return Check(
            "database",
            False,
            f"{detail}, {rejected} rejected spool segment(s) in {store.spool_dir}",
            "inspect the *.rejected files: their rows were kept but could not be loaded",
        )
    return Check("database", True, detail)


def check_sampler(settings: Settings, now: datetime | None = None) -> Check:
    """The age of the last good billing sample: the budget gate closes when it passes the limit."""
    from .billing.runs import last_good_runs, sampled_providers

    providers = sampled_providers(settings)
    if not providers:
        return Check("sampler", True, "no provider configured: nothing to sample")
    limit = settings.budget.max_sample_age_s
    fix = "install the cron line from `spot cron`, or run `spot sample --every 60`"
    try:
        with Store(settings.home).reading() as con:
            runs = last_good_runs(con, providers)
    except SpotError as exc:
        return Check("sampler", False, f"cannot read the samples: {exc}", exc.hint)
    if not runs:
        # A fresh install has no sample yet: not a failure of this machine, but said plainly.
        return Check("sampler", True, f"no sample yet: {fix}")
    now = now or datetime.now(UTC)
    ages = []
    for name in providers:
        run = runs.get(name)
        ages.append(f"{name}: never" if run is None else f"{name}: {(now - run.finished_at).total_seconds():.0f} s ago")
    stale = [n for n in providers if n not in runs or (now - runs[n].finished_at).total_seconds() > limit]
    detail = f"last good sample {', '.join(ages)} (limit {limit} s)"
    if stale:
        effect = "spend is unobservable" if settings.budget.daily_usd is None else "the budget gate is closed"
        return Check("sampler", False, f"{detail}: {effect} while billing is stale", fix)
    return Check("sampler", True, detail)


def check_provider_credentials(settings: Settings) -> list[Check]:
    used = sorted({tier.provider for tier in settings.tiers.values()})
    checks = []
    for name in used:
        provider = settings.providers[name]
        label = f"provider {name}"
        if provider.emulator:
            checks.append(Check(label, True, f"emulator at {provider.base_url}: no key needed"))
        elif provider.api_key is not None:
            via = "api_key_file" if provider.api_key_file else "environment"
            checks.append(Check(label, True, f"API key set (from {via}) for {provider.base_url}"))
        else:
            checks.append(
                Check(
                    label,
                    False,
                    "no API key",
                    f"export SPOT_PROVIDERS__{name.upper()}__API_KEY=... or set "
                    f"providers.{name}.api_key_file",
                )
            )
    if not used:
        checks.append(Check("provider", True, "no tiers configured, so no provider is needed"))
    return checks


def check_ssh_key(settings: Settings) -> Check:
    needs_ssh = any(not settings.providers[t.provider].emulator for t in settings.tiers.values())
    key_path = settings.ssh.key_path
    if key_path is None:
        if not needs_ssh:
            return Check("ssh key", True, "not needed: emulated nodes use the local transport")
        if os.environ.get("SSH_AUTH_SOCK"):
            return Check("ssh key", True, "no ssh.key_path: the SSH agent will be used")
        defaults = [Path.home() / ".ssh" / n for n in ("id_ed25519", "id_ecdsa", "id_rsa")]
        found = [p for p in defaults if p.is_file()]
        if found:
            return Check("ssh key", True, f"no ssh.key_path: using {found[0]}")
        return Check(
            "ssh key", False, "no ssh.key_path, no SSH agent and no key in ~/.ssh",
            "set ssh.key_path in the config (e.g. ~/.ssh/id_ed25519) or start ssh-agent",
        )
    key_path = key_path.expanduser()
    try:
        mode = key_path.stat().st_mode
        with key_path.open("rb") as handle:
            head = handle.read(64)
    except OSError as exc:
        return Check("ssh key", False, f"{key_path}: {exc.strerror}", "set ssh.key_path to a readable private key")
    if b"PRIVATE KEY" not in head:
        return Check("ssh key", False, f"{key_path} is not a private key file", "point ssh.key_path at a private key")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return Check("ssh key", False, f"{key_path} is readable by others", f"chmod 600 {key_path}")
    return Check("ssh key", True, str(key_path))
