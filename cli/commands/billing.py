"""`spot sample` (cron, every minute) and `spot cron` (the lines that schedule it)."""

from __future__ import annotations

import json as jsonlib
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from spotinference.child import python_module
from spotinference.jsonable import jsonable

from ..output import print_error, print_json
from ..state import CliState
from .options import JsonOption

if TYPE_CHECKING:
    from spotinference.billing.sampler import SampleRun


def register(app: typer.Typer) -> None:
    app.command("sample")(sample)
    app.command("cron")(cron)


def sample(
    ctx: typer.Context,
    json: JsonOption = False,
    every: Annotated[
        float | None,
        typer.Option("--every", help="Sample every SECONDS until Ctrl-C (for setups without cron).",
                     metavar="SECONDS", show_default=False, min=1),
    ] = None,
) -> None:
    """Sample the provider's billing once (cron runs this every minute; see `spot cron`)."""
    from spotinference.billing.sampler import sample as run_sample
    from spotinference.errors import InputError, SpotError

    from ..fleet_progress import show_provider_retries

    state: CliState = ctx.obj
    settings, store = state.settings, state.store()
    if sys.stderr.isatty():  # cron's log keeps its one line per failed run
        show_provider_retries(ctx, json_lines=json)
    if every is None:
        began = time.monotonic()
        try:
            result = run_sample(settings, store)
        except SpotError as exc:  # nothing could be recorded (e.g. the database stayed busy)
            if json:
                print_json({"ok": False, "resources": 0, "duration_s": round(time.monotonic() - began, 3),
                            "run_id": None, "sampled_at": None, "spend_usd_since_last": None,
                            "error": exc.message, "skipped": False, "runs": []})
            raise
        _render(result, json=json, lines=False)
        if not result.ok:
            raise typer.Exit(result.exit_code)
        return
    try:
        while True:
            started = time.monotonic()
            try:
                _render(run_sample(settings, store), json=json, lines=True)
            except InputError:
                raise  # the configuration is wrong: no later run can do better
            except Exception as exc:  # noqa: BLE001 - a failed run (even the database's) must not stop the loop
                print_error(getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}", getattr(exc, "hint", None))
            time.sleep(max(0.0, every - (time.monotonic() - started)))
    except KeyboardInterrupt:
        sys.stderr.write("spot sample: stopped\n")


def _render(result: SampleRun, *, json: bool, lines: bool) -> None:
    if json:
        data = jsonable(result.to_dict())
        if lines:  # one object per line, so a loop's output is JSON Lines
            sys.stdout.write(jsonlib.dumps(data) + "\n")
            sys.stdout.flush()
        else:
            print_json(data)
    elif result.ok and not result.skipped:
        spend = result.spend_usd_since_last
        since = "" if spend is None else f", ${spend:.6f} billed since the last sample"
        sampled = result.sampled_at.isoformat(timespec="seconds") if result.sampled_at else "?"
        typer.echo(f"sampled {result.resources} resource(s) at {sampled} in {result.duration_s:.2f} s"
                   f" (run {result.run_id}){since}")
    if result.skipped:
        sys.stderr.write(f"spot sample: {result.skipped_because}\n")
    elif not result.ok:
        print_error(f"billing sample failed: {result.error}", result.hint)
    for problem in result.errors:
        sys.stderr.write(f"spot sample: warning: {problem}\n")
    sys.stderr.flush()


# -- spot cron ----------------------------------------------------------------------------------

def _spot_executable() -> str:
    argv0 = Path(sys.argv[0])
    if argv0.name == "spot" and argv0.exists():
        return str(argv0.resolve())
    beside = Path(sys.executable).with_name("spot")
    if beside.exists():
        return str(beside)
    found = shutil.which("spot")
    if found:
        return str(Path(found).resolve())
    return " ".join(python_module("spotinference_cli.main"))


def _systemd_quote(word: str) -> str:
    if word and not any(c in word for c in " \t\"'\\%$;"):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$") + '"'


def _systemd_env_quote(assignment: str) -> str:
    # Environment= expands specifiers (%) but not variables: a "$" is itself, unlike in ExecStart=.
    if assignment and not any(c in assignment for c in " \t\"'\\%"):
        return assignment
    return '"' + assignment.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


def cron(ctx: typer.Context, json: JsonOption = False) -> None:
    """Print the crontab line and a systemd service + timer that run `spot sample` every minute.

    They carry the SPOT_* settings in effect here (cron and systemd see none of this shell's
    environment), except secrets, which are never written into them: each gets a note saying how
    to hand it over instead.
    """
    from spotinference.config.provenance import environment_in_effect, explain_settings

    state: CliState = ctx.obj
    settings, source, origins = explain_settings(state.config_path)
    spot = _spot_executable()
    home = settings.home.expanduser().resolve()
    workdir = Path.cwd().resolve()
    config = source.path.resolve() if source.path is not None else None
    spot_words = shlex.split(spot) if " -m " in spot else [spot]
    base = [*spot_words, *(["--config", str(config)] if config else [])]
    home.mkdir(parents=True, exist_ok=True)  # else cron's `>> sample.log` fails before spot even starts
    in_effect = [e for e in environment_in_effect(origins) if e.name.upper() != "SPOT_HOME"]
    carried = [("SPOT_HOME", str(home))] + [(e.name, e.value) for e in in_effect if not e.secret]
    crontab, service, timer = _schedule(
        [*base, "sample"], carried, workdir, home / "sample.log", cron_time="* * * * *",
        description="spotinference billing sampler (spot sample)", calendar="minutely",
        timer_description="Run spot sample every minute", unit="spot-sample.service")
    site = home / "site"
    # The economics site, daily just after midnight: yesterday is a whole day in its chart by then.
    publish_crontab, publish_service, publish_timer = _schedule(
        [*base, "publish", str(site)], carried, workdir, home / "publish.log",
        cron_time="10 0 * * *", description="spotinference economics site (spot publish)",
        calendar="*-*-* 00:10:00 UTC", timer_description="Run spot publish daily", unit="spot-publish.service")
    notes = _secret_notes(settings, [e for e in in_effect if e.secret])
    if json:
        print_json({"crontab": crontab, "systemd": {"spot-sample.service": service, "spot-sample.timer": timer},
                    "publish": {"crontab": publish_crontab, "directory": str(site),
                                "systemd": {"spot-publish.service": publish_service,
                                            "spot-publish.timer": publish_timer}},
                    "spot": spot, "home": str(home), "config": str(config) if config else None,
                    "environment": [name for name, _ in carried], "notes": notes})
        return
    out = [
        "# crontab -e, then add (spot sample every minute; its output goes to sample.log):",
        crontab,
        "",
        "# or systemd: save these two files in ~/.config/systemd/user/, then",
        "#   systemctl --user daemon-reload && systemctl --user enable --now spot-sample.timer",
        "# ~/.config/systemd/user/spot-sample.service",
        service,
        "# ~/.config/systemd/user/spot-sample.timer",
        timer,
        f"# and the economics site, rebuilt daily at 00:10 (cron's clock; the timer's is UTC) into {site}:",
        publish_crontab,
        "#   systemctl --user enable --now spot-publish.timer",
        "# ~/.config/systemd/user/spot-publish.service",
        publish_service,
        "# ~/.config/systemd/user/spot-publish.timer",
        publish_timer,
    ]
    typer.echo("\n".join(out))
    for note in notes:  # on stderr: what is pasted from stdout stays exactly the lines
        typer.echo(f"spot cron: note: {note}", err=True)


def _schedule(args: list[str], carried: list[tuple[str, str]], workdir: Path, log_file: Path, *, cron_time: str,
              description: str, calendar: str, timer_description: str, unit: str) -> tuple[str, str, str]:
    """A crontab line and a systemd service + timer that run ``args`` with ``carried`` set."""
    assignments = " ".join(f"{name}={shlex.quote(value)}" for name, value in carried)
    command = f"cd {shlex.quote(str(workdir))} && {assignments} {shlex.join(args)} >> {shlex.quote(str(log_file))} 2>&1"
    crontab = cron_time + " " + command.replace("%", "\\%")  # cron turns a bare % into a newline
    service = "\n".join([
        "[Unit]",
        f"Description={description}",
        "",
        "[Service]",
        "Type=oneshot",
        f"WorkingDirectory={_systemd_quote(str(workdir))}",
        *(f"Environment={_systemd_env_quote(f'{name}={value}')}" for name, value in carried),
        f"ExecStart={' '.join(_systemd_quote(a) for a in args)}",
        "",
    ])
    timer = "\n".join([
        "[Unit]",
        f"Description={timer_description}",
        "",
        "[Timer]",
        f"OnCalendar={calendar}",
        "AccuracySec=1s",
        f"Unit={unit}",
        "",
        "[Install]",
        "WantedBy=timers.target",
        "",
    ])
    return crontab, service, timer


def _secret_notes(settings: Any, secrets: list[Any]) -> list[str]:
    """One line per secret in the environment: it is not in the lines, and how to hand it over instead."""
    from spotinference.billing.runs import sampled_providers
    from spotinference.config.provenance import SECRET_FILES

    needed = {f"providers.{name}.api_key" for name in sampled_providers(settings)
              if not settings.providers[name].emulator}
    notes = []
    for env in secrets:
        key = env.keys[0]
        impact = "spot sample needs it" if needed & set(env.keys) else "spot sample does not need it"
        instead = (f"put it in a file only you can read and set {key}_file in the config, or give the service "
                   "EnvironmentFile=" if key.rsplit(".", 1)[-1] in SECRET_FILES else
                   "put it in a file only you can read and give the service EnvironmentFile= (or source it in the "
                   "crontab line)")
        notes.append(f"${env.name} is a secret, so it is not written into these lines ({impact}): {instead}")
    return notes
