"""`spot`: the entry point, the global options and the one error boundary.

Only Typer is imported at start-up; every command imports the library it needs when it runs,
so `spot --help` and `spot --version` stay fast.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from spotinference import __version__

from .commands import bench, billing, config, db, events, fleet, gateway, money, publish, setup, sim
from .commands import demo as demo_command
from .state import CliState

app = typer.Typer(
    name="spot",
    help=(
        "Serve open-weights LLMs on GPUs rented by the minute, with an invoice-true cost per "
        "million tokens."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # rich-rendered help costs ~120 ms of start-up
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"spot {__version__}\n")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="Config file (else $SPOT_CONFIG, else ./spot.toml, else the embedded default).",
            show_default=False,
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", callback=_print_version, is_eager=True),
    ] = False,
) -> None:
    ctx.obj = CliState(config_path=config)


setup.register(app)
config.register(app)
app.add_typer(db.app, name="db")
gateway.register(app)
fleet.register(app)
events.register(app)
money.register(app)
billing.register(app)
publish.register(app)
app.add_typer(sim.app, name="sim")
bench.register(app)
demo_command.register(app)


_interrupted = False
_AFTER_CTRL_C = "nothing recorded is lost; run the same command again to resume"


def _on_ctrl_c(signum: int, frame: object) -> None:
    # Remember the Ctrl-C: a library may turn the KeyboardInterrupt raised here into an error of
    # its own (DuckDB raises RuntimeError("Query interrupted")), which is still an interrupt.
    global _interrupted
    _interrupted = True
    signal.default_int_handler(signum, frame)


def run() -> None:
    """Console-script entry: turn library errors into one line and an exit code."""
    from spotinference.errors import SpotError

    debug = os.environ.get("SPOT_DEBUG") == "1"
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when started with SIGINT ignored
        signal.signal(signal.SIGINT, _on_ctrl_c)
    try:
        app()
    except SpotError as exc:
        if debug:
            raise
        from .output import print_error

        print_error(exc.message, exc.hint)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write(f"interrupted: {_AFTER_CTRL_C}\n")
        sys.exit(130)
    except SystemExit as exc:
        if exc.code == 130:  # Typer turns Ctrl-C inside a command into a silent Exit(130)
            sys.stderr.write(f"interrupted: {_AFTER_CTRL_C}\n")
        raise
    except Exception as exc:  # noqa: BLE001 - the boundary: anything else is a bug, said plainly
        if _interrupted:
            sys.stderr.write(f"interrupted ({type(exc).__name__}: {exc}): {_AFTER_CTRL_C}\n")
            sys.exit(130)
        if debug:
            raise
        from .output import print_error

        print_error(
            f"internal error: {type(exc).__name__}: {exc}",
            "this is a bug in spot; rerun with SPOT_DEBUG=1 for the traceback and report it",
        )
        sys.exit(70)


if __name__ == "__main__":
    run()
