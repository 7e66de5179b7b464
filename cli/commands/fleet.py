"""`spot up/down/wake/hibernate/status/logs/ssh`: the fleet's lifecycle.

Each command is a few lines over ``spotinference.fleet``; progress arrives as callbacks and is
rendered here, one line per step on stderr (a live view that also reads well in a log).
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

from ..state import CliState
from .options import JsonOption

if TYPE_CHECKING:
    from spotinference.fleet.context import FleetContext

TierArg = Annotated[str, typer.Argument(help="The tier's name, as in [tiers.NAME] of the config.", show_default=False)]
NodeArg = Annotated[str, typer.Argument(help="The node's name, e.g. spot-demo-1 (see `spot status`).", show_default=False)]


@contextmanager
def _fleet(ctx: typer.Context, *, quiet: bool = False, json: bool = False):  # noqa: ANN202
    """A FleetContext whose provider retries (and, unless ``quiet``, progress) show on stderr."""
    with _watched_fleet(ctx, quiet=quiet, json=json) as (fleet_context, _view):
        yield fleet_context


@contextmanager
def _watched_fleet(ctx: typer.Context, *, quiet: bool = False, json: bool = False):  # noqa: ANN202
    """A FleetContext and the view that renders its progress (cli/fleet_progress.py): a live view
    at a terminal, lines in a log, JSON lines with ``json``. Stop the view before the final table."""
    from spotinference.fleet.context import FleetContext

    from ..fleet_progress import FleetProgressView

    state: CliState = ctx.obj
    with FleetProgressView(json_lines=json, quiet=quiet) as view:
        fleet_context = FleetContext(state.settings, state.store(), on_progress=view.progress)
        try:
            yield fleet_context, view
        finally:
            fleet_context.close()


def _show_status(context: FleetContext, tier: str | None, *, json: bool) -> None:
    from .status_view import show_status

    show_status(context, tier, json=json)


def up(
    ctx: typer.Context,
    tier: TierArg,
    nodes: Annotated[int | None, typer.Option("--nodes", "-n", help="How many nodes (default: min_nodes, at least 1).")] = None,
    json: JsonOption = False,
) -> None:
    """Create and bootstrap a tier's nodes (or restore hibernated ones) until they serve."""
    from spotinference.fleet.operations import Fleet

    with _watched_fleet(ctx, json=json) as (context, view):
        Fleet(context).up(tier, nodes=nodes)
        view.stop()
        _show_status(context, tier, json=json)


def wake(ctx: typer.Context, tier: TierArg, json: JsonOption = False) -> None:
    """Restore a hibernated tier and wait until its nodes serve."""
    from spotinference.fleet.operations import Fleet

    with _watched_fleet(ctx, json=json) as (context, view):
        Fleet(context).wake(tier)
        view.stop()
        _show_status(context, tier, json=json)


def hibernate(ctx: typer.Context, tier: TierArg, json: JsonOption = False) -> None:
    """Hibernate a tier: the GPU stops billing, its disk, volumes and IP keep billing."""
    from spotinference.fleet.operations import Fleet

    with _watched_fleet(ctx, json=json) as (context, view):
        Fleet(context).down(tier, reason="spot hibernate")
        view.stop()
        _show_status(context, tier, json=json)


def down(
    ctx: typer.Context,
    tier: TierArg,
    terminate: Annotated[bool, typer.Option("--terminate", help="Delete the nodes instead of hibernating them.")] = False,
    volumes: Annotated[bool, typer.Option("--volumes", help="With --terminate: also delete the tier's weights volumes (they bill until deleted).")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before deleting.")] = False,
    json: JsonOption = False,
) -> None:
    """Hibernate a tier's nodes (default), or delete them with --terminate (weights volumes stay,
    and bill, unless --volumes)."""
    from spotinference.errors import InputError
    from spotinference.fleet.operations import Fleet

    if volumes and not terminate:
        raise InputError("--volumes deletes the tier's weights volumes and needs --terminate",
                         hint=f"`spot down {tier} --terminate --volumes`")
    what = "the nodes and their weights volumes" if volumes else "the nodes"
    if terminate and not yes:
        if not sys.stdin.isatty():
            flags = "--terminate --volumes" if volumes else "--terminate"
            raise InputError(f"{flags} deletes {what}: add --yes to confirm when not at a terminal")
        lost = "Their disks and the weights on their volumes are lost" if volumes else \
            "Their local disks are lost (weights volumes stay, and keep billing)"
        typer.confirm(f"Delete every node of tier {tier}{' and its weights volumes' if volumes else ''}? {lost}",
                      abort=True)
    with _watched_fleet(ctx, json=json) as (context, view):
        Fleet(context).down(tier, terminate=terminate)
        if volumes:
            from spotinference.fleet.volumes import delete_tier_volumes

            delete_tier_volumes(context, tier, reason="spot down --terminate --volumes")
        view.stop()
        _show_status(context, tier, json=json)


def status(
    ctx: typer.Context,
    tier: Annotated[str | None, typer.Argument(help="Only this tier.", show_default=False)] = None,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh in place until Ctrl-C (which exits 0).")] = False,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between refreshes with --watch.", min=0.5)] = 2.0,
    json: JsonOption = False,
) -> None:
    """One row per node: tier, state, provider id, IP, GPU, current rate, up since, last request;
    then what keeps billing while everything sleeps (volumes, hibernated VMs)."""
    with _fleet(ctx, quiet=True, json=json) as context:
        if watch:
            from .status_view import watch_status

            watch_status(context, tier, interval_s=interval, json=json)
        else:
            _show_status(context, tier, json=json)


def logs(
    ctx: typer.Context,
    node: NodeArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep following new lines.")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", help="How many recent lines to show first.")] = 200,
) -> None:
    """Show a node's engine log (the systemd journal on real nodes)."""
    from spotinference.fleet.access import node_logs

    with _fleet(ctx, quiet=True) as context:
        try:
            for line in node_logs(context, node, follow=follow, lines=lines):
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
        except KeyboardInterrupt:
            pass


def ssh(
    ctx: typer.Context,
    node: NodeArg,
    command: Annotated[list[str] | None, typer.Argument(help="A command to run instead of a shell (after --).", show_default=False)] = None,
) -> None:
    """Open a shell on a node, or run a command on it: `spot ssh NODE -- nvidia-smi`."""
    import os

    from spotinference.fleet.access import node_shell_argv, run_on_node

    with _fleet(ctx, quiet=True) as context:
        if command:
            result = run_on_node(context, node, command)
            sys.stdout.write(result.stdout)
            sys.stderr.write(result.stderr)
            raise typer.Exit(result.exit_status)
        argv = node_shell_argv(context, node)
    os.execvp(argv[0], argv)


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("down")(down)
    app.command("wake")(wake)
    app.command("hibernate")(hibernate)
    app.command("status")(status)
    from .volumes import volumes

    app.command("volumes")(volumes)
    app.command("logs")(logs)
    app.command("ssh")(ssh)
