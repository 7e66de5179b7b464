"""`spot doctor`: the checks that tell an operator whether spot can work here, each with its fix."""

from __future__ import annotations

import os
import stat
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from .config import ConfigSource, Settings, load_settings, locate_config
from .billing.budget import FUTURE_TOLERANCE_S
from .errors import SpotError
from .reports import available_queries
from .store import Store
from .store.migrations import bundled_migrations


@dataclass(frozen=True)
class Check:
    """One line of the report. A ``warning`` is shown with its fix but does not fail the run: the
    thing checked is not running yet, which is normal on a fresh machine (nothing started)."""

    name: str
    ok: bool
    detail: str
    fix: str | None = None
    warning: bool = False

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def run_checks(config_path: Path | None = None) -> list[Check]:
    checks = [check_bundled_files()]
    try:
        settings, source = load_settings(config_path)
    except SpotError as exc:
        checks.append(_config_failed(exc, config_path))
        return checks
    checks.append(check_config(settings, source))
    checks.append(check_data_dir(settings.home))
    checks.append(check_database(settings))
    checks.append(check_sampler(settings))
    checks.append(check_ledger(settings))
    checks.extend(check_provider_credentials(settings))
    checks.append(check_ssh_key(settings))
    checks.append(check_gateway(settings))
    checks.extend(check_providers_and_engines(settings))
    return checks


def run_config_checks(config_path: Path | None = None) -> list[Check]:
    """The checks of the config alone (`spot config check`): nothing is probed or opened."""
    try:
        settings, source = load_settings(config_path)
    except SpotError as exc:
        return [_config_failed(exc, config_path)]
    return [check_config(settings, source), *check_provider_credentials(settings), check_ssh_key(settings)]


def _config_failed(exc: SpotError, config_path: Path | None) -> Check:
    source = locate_config(config_path)
    # A bad SPOT_* variable is fixed in the environment, not in the file.
    where = "that environment variable" if str(exc).startswith("environment variable ") else source.label
    return Check("config", False, str(exc), exc.hint or f"fix {where}")


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


def check_database(settings: Settings) -> Check:
    try:
        store = Store.from_settings(settings)
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
        with Store.from_settings(settings).reading() as con:
            runs = last_good_runs(con, providers)
    except SpotError as exc:
        return Check("sampler", False, f"cannot read the samples: {exc}", exc.hint)
    if not runs:
        # A fresh install has no sample yet: not a failure of this machine, but said plainly.
        return _warn("sampler", "no billing sample yet", fix)
    now = now or datetime.now(UTC)
    ages = []
    for name in providers:
        run = runs.get(name)
        ages.append(f"{name}: never" if run is None else f"{name}: {(now - run.finished_at).total_seconds():.0f} s ago")
    stale = [n for n in providers if n not in runs or (now - runs[n].finished_at).total_seconds() > limit]
    detail = f"last good sample {', '.join(ages)} (limit {limit} s)"
    ahead = [n for n in runs if (runs[n].finished_at - now).total_seconds() > FUTURE_TOLERANCE_S]
    if ahead:
        return Check("sampler", False, f"{detail}: dated in the future ({', '.join(ahead)}), a clock fault that "
                     "closes the budget gate", "check NTP on this host and on the sampler's")
    if stale:
        effect = "spend is unobservable" if settings.budget.daily_usd is None else "the budget gate is closed"
        return Check("sampler", False, f"{detail}: {effect} while billing is stale", fix)
    return Check("sampler", True, detail)


_LEDGER = """
SELECT
    (SELECT count(*) FROM billing_anomalies WHERE sampled_at >= $since AND kind = 'decrease'),
    (SELECT count(*) FROM billing_anomalies WHERE sampled_at >= $since AND kind = 'missing_total'),
    (SELECT count(*) FROM billing_anomalies WHERE sampled_at >= $since AND kind = 'unexplained_first_total'),
    (SELECT arg_max(provider || ' ' || resource_type || ' ' || resource_id || coalesce(' (' || name || ')', '')
                    || ' at ' || strftime(sampled_at, '%Y-%m-%d %H:%M UTC'), sampled_at)
     FROM billing_anomalies WHERE sampled_at >= $since),
    (SELECT count(*) FROM sample_runs WHERE started_at >= $since AND clock_behind_s IS NOT NULL),
    (SELECT max(clock_behind_s) FROM sample_runs WHERE started_at >= $since)
"""


def check_ledger(settings: Settings, now: datetime | None = None, days: int = 7) -> Check:
    """What the ledger refused to count, and clock steps, over the last ``days`` days."""
    now = now or datetime.now(UTC)
    try:
        with Store.from_settings(settings).reading() as con:
            decreases, missing, unexplained, latest, steps, most = con.execute(
                _LEDGER, {"since": now - timedelta(days=days)}).fetchone()
    except SpotError as exc:
        return Check("ledger", False, f"cannot read the samples: {exc}", exc.hint)
    notes = []
    if decreases or missing or unexplained:
        parts = [f"{decreases} bill total(s) below their high-water mark", f"{missing} missing total(s)"]
        if unexplained:
            parts.append(f"{unexplained} first total(s) too large to be new, with no create time")
        notes.append(f"{', '.join(parts[:-1])} and {parts[-1]} not counted (latest: {latest})")
    if steps:
        notes.append(f"the sampler's clock stepped behind its previous run {steps} time(s) (by up to {most:.0f} s); "
                     "those runs were recorded in sequence")
    if not notes:
        return Check("ledger", True, f"no billing anomaly or clock step in the last {days} days")
    return _warn("ledger", "; ".join(notes) + f" in the last {days} days",
                 "see the anomalies in `spot cost --json`; `spot cost reconcile` compares with the provider's own history")


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


# -- what is running: the gateway, the provider (or emulator), the engines --------------------------
# Each probe has a short timeout, so a doctor run with nothing running still takes about a second.
# "Not running" is a warning, not a failure: a fresh machine has started nothing yet. Something
# that runs but answers wrongly (an engine down on a running VM, a refused key) is a failure.

PROBE_TIMEOUT_S = 1.5


def _warn(name: str, detail: str, fix: str) -> Check:
    return Check(name, True, f"{detail} (fix: {fix})", fix, warning=True)


def _loopback(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def check_gateway(settings: Settings) -> Check:
    """GET /health on the configured gateway address."""
    import httpx

    from .gateway.operator import operator_endpoint

    root = f"http://{_loopback(settings.gateway.host)}:{settings.gateway.port}"
    fix = "start it with `spot serve`"
    # The detail (models, tiers, the gate) is the operator's: asked with the operator token, or on
    # the operator listener when one is configured.
    operator_root, headers = operator_endpoint(settings)
    try:
        response = httpx.get(f"{operator_root}/health", headers=headers, timeout=PROBE_TIMEOUT_S)
    except httpx.HTTPError:
        return _warn("gateway", f"not running at {operator_root}", fix)
    try:
        data = response.json()
    except ValueError:
        data = None
    if response.status_code != 200 or not isinstance(data, dict) or data.get("status") != "ok":
        return Check("gateway", False, f"{root}/health answered HTTP {response.status_code}, not a healthy spot gateway",
                     f"see what listens on port {settings.gateway.port}; then start the gateway with `spot serve` "
                     "(or set gateway.port)")
    if "models" not in data:
        return _warn("gateway", f"running at {root}/v1, but it did not accept this machine's operator token, so its "
                     "models, tiers and budget gate are not shown",
                     "run `spot doctor` with the gateway's config and home (its token is gateway.operator_token_file, "
                     "default <home>/operator-token), or set gateway.operator_port")
    tiers = data.get("tiers") or []
    detail = f"running at {root}/v1: models {', '.join(data.get('models') or []) or 'none'}"
    if tiers:
        detail += "; tiers " + ", ".join(f"{t['tier']} {t['state']}" for t in tiers)
    gate = data.get("budget_gate")
    if gate and not gate.get("open"):
        reason = gate.get("reason")
        fix = ("run the sampler: install the cron line from `spot cron`, or `spot sample --every 60`"
               if reason == "billing_unobservable" else "raise budget.daily_usd, or wait for the budget's day to roll over")
        return Check("gateway", False, f"{detail}; its budget gate is CLOSED ({reason}): {gate.get('message')}", fix)
    return Check("gateway", True, detail)


def _port_open(url: str) -> bool:
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def check_providers_and_engines(settings: Settings) -> list[Check]:
    """For each provider a tier uses: one cheap authenticated call (its flavors); then, for each
    of its tiers, the nodes' VM states and their engines' /health."""
    checks: list[Check] = []
    for name in sorted({tier.provider for tier in settings.tiers.values()}):
        config = settings.providers[name]
        tiers = sorted((t for t in settings.tiers.values() if t.provider == name), key=lambda t: t.name)
        label = f"provider {name} api"
        if not config.has_credentials:
            checks.append(Check(label, False, "not tried: no API key (see above)",
                                f"export SPOT_PROVIDERS__{name.upper()}__API_KEY=..."))
            checks += [_warn(f"engines {t.name}", f"unknown: provider {name} was not reached",
                             f"fix provider {name} first") for t in tiers]
            continue
        if config.emulator and not _port_open(config.base_url):
            checks.append(_warn(label, f"the emulator is not running at {config.base_url}",
                                "start it with `spot sim cloud`"))
            checks += [_warn(f"engines {t.name}", f"unknown: provider {name} is not running",
                             "start it with `spot sim cloud`, then `spot up " + t.name + "`") for t in tiers]
            continue
        provider_check, vms = _probe_provider(settings, name, tiers)
        checks.append(provider_check)
        for tier in tiers:
            if vms is None:
                checks.append(_warn(f"engines {tier.name}", f"unknown: provider {name} did not answer",
                                    f"fix provider {name} first"))
            else:
                checks.append(check_engines(settings, tier, vms))
    return checks


def _probe_provider(settings: Settings, name: str, tiers: list) -> tuple[Check, list | None]:
    from .fleet.naming import PREFIX
    from .providers import ProviderError
    from .providers.errors import ProviderAuthError, ProviderRateLimitedError, ProviderUnavailableError
    from .providers.registry import open_provider

    config = settings.providers[name]
    fast = config.model_copy(update={"request_timeout_s": 3.0, "retry_deadline_s": 3.0, "retry_base_s": 0.25})
    probe = settings.model_copy(update={"providers": {**settings.providers, name: fast}})
    label = f"provider {name} api"
    what = "emulator" if config.emulator else "API"
    try:
        with open_provider(probe, name) as provider:
            missing = [t.flavor for t in tiers if provider.get_flavor(t.flavor, t.region) is None]
            vms = provider.list_vms(PREFIX)
    except ProviderAuthError as exc:
        return Check(label, False, f"{config.base_url} refused the API key: {exc.message}",
                     f"check SPOT_PROVIDERS__{name.upper()}__API_KEY (or providers.{name}.api_key_file)"), None
    except (ProviderUnavailableError, ProviderRateLimitedError) as exc:
        fix = "start it with `spot sim cloud`" if config.emulator else \
            f"check the network and providers.{name}.base_url; try again later if the provider is down"
        return Check(label, False, f"the {what} at {config.base_url} did not answer: {exc.message}", fix), None
    except ProviderError as exc:
        return Check(label, False, f"the {what} at {config.base_url} failed: {exc.message}", exc.hint), None
    if missing:
        return Check(label, False, f"reachable at {config.base_url}, but it offers no flavor {', '.join(sorted(set(missing)))}",
                     "set tiers.NAME.flavor to a flavor the provider lists"), vms
    flavors = ", ".join(sorted({t.flavor for t in tiers}))
    return Check(label, True, f"{what} reachable at {config.base_url}: key accepted, flavor {flavors} offered"), vms


def check_engines(settings: Settings, tier, vms: list) -> Check:  # noqa: ANN001 - Tier, [Vm]
    """A tier's nodes: serving (engine /health 200), asleep, starting, or broken."""
    import httpx

    from .fleet.connect import engine_url
    from .fleet.naming import belongs_to
    from .providers import VmPhase

    name = f"engines {tier.name}"
    mine = sorted((vm for vm in vms if belongs_to(vm.name, tier.name)), key=lambda vm: vm.name)
    if not mine:
        if tier.min_nodes > 0:
            return Check(name, False, f"no nodes, but min_nodes = {tier.min_nodes} keeps the tier warm",
                         f"`spot up {tier.name}`")
        return _warn(name, "no nodes yet: the gateway creates one on the first request",
                     f"`spot up {tier.name}` to create it now")
    serving, asleep, starting, broken = [], [], [], []
    for vm in mine:
        if vm.phase is VmPhase.RUNNING and vm.ready:
            url = engine_url(vm, tier)
            try:
                healthy = url is not None and httpx.get(f"{url}/health", timeout=PROBE_TIMEOUT_S).status_code == 200
            except httpx.HTTPError:
                healthy = False
            (serving if healthy else broken).append(
                vm.name if healthy else f"{vm.name}: VM {vm.status} but its engine does not answer /health")
        elif vm.phase is VmPhase.HIBERNATED:
            asleep.append(vm.name)
        elif vm.phase in (VmPhase.ERROR, VmPhase.STOPPED):
            broken.append(f"{vm.name}: VM in {vm.status}")
        else:
            starting.append(f"{vm.name} {vm.status}")
    parts = []
    if serving:
        parts.append(f"{len(serving)} serving ({', '.join(serving)})")
    if asleep:
        parts.append(f"{len(asleep)} hibernated ({', '.join(asleep)}): woken by the first request")
    if starting:
        parts.append(", ".join(starting))
    if broken:
        return Check(name, False, "; ".join(broken + parts),
                     f"`spot up {tier.name}` (replaces a lost VM, restarts a stopped engine) or `spot wake {tier.name}`; "
                     f"`spot logs {mine[0].name}` shows the engine's log")
    if asleep and tier.min_nodes > 0 and not serving:
        return Check(name, False, "; ".join(parts) + f", but min_nodes = {tier.min_nodes} keeps it warm",
                     f"`spot wake {tier.name}`")
    if starting and not serving:
        return _warn(name, "; ".join(parts), f"wait, or `spot wake {tier.name}` to wait for it")
    return Check(name, True, "; ".join(parts))
