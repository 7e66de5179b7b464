"""`spot sample`, `spot cost`, `spot cron`: billing samples and the invoice-true cost report."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from .planned import _not_built

    app.command("sample", help="Sample the provider's billing (run by cron every minute). (not built yet)",
                context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(_not_built("sample", 6))
    app.command("cost", help="Invoice-true cost per million tokens, from queries/*.sql. (not built yet)",
                context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(_not_built("cost", 6))
