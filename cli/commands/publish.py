"""`spot publish DIR [--until WHEN] [--serve]`: the static economics site."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from ..state import CliState
from .money import _moment


def register(app: typer.Typer) -> None:
    app.command("publish")(publish)


def publish(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="Where to write index.html, method.html and data.json.")],
    until: Annotated[str | None, typer.Option("--until", help="End of the week and of the 90 days shown (default now): "
                                              "YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS], UTC unless an offset is given.")] = None,
    serve: Annotated[bool, typer.Option("--serve", help="Then serve DIR over HTTP on this machine until Ctrl-C.")] = False,
    host: Annotated[str, typer.Option("--host", help="With --serve: the address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="With --serve: the port (0: any free one).", min=0, max=65535)] = 8000,
) -> None:
    """Write the economics site: this week's cost per million output tokens, 90 days of spend, the SQL behind it.

    `spot cron` prints a daily timer line for it.
    """
    from spotinference.billing.runs import sampled_providers
    from spotinference.publish import gather, write
    from spotinference.publish.serve import server

    state: CliState = ctx.obj
    settings = state.settings
    now = datetime.now(UTC)
    end = _moment("--until", until) or now
    figures = gather(state.store(), end, now=now,
                     accounts=sampled_providers(settings) if settings.providers else [],
                     fresh_within_s=float(settings.budget.max_sample_age_s))
    written = write(figures, directory)
    typer.echo(f"wrote {', '.join(str(p) for p in written)} (this week: {figures.status})")
    if not serve:
        return
    httpd = server(written[0].parent.resolve(), host, port)
    bound_host, bound_port = httpd.server_address[:2]
    typer.echo(f"serving {written[0].parent} at http://{bound_host}:{bound_port}/ (Ctrl-C to stop)")
    sys.stdout.flush()
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        sys.stderr.write("spot publish: stopped\n")
    finally:
        httpd.server_close()
