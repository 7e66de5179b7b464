"""`spot up/down/wake/hibernate/status/logs/ssh`: the fleet's lifecycle."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from .planned import _not_built

    for name, summary in {
        "up": "Provision a tier's nodes and start vLLM on them.",
        "down": "Hibernate a tier's nodes, or delete them with --terminate.",
        "wake": "Restore a hibernated tier.",
        "hibernate": "Hibernate a tier (storage keeps billing, the GPU stops).",
        "status": "Show tiers, nodes and their states.",
        "logs": "Follow a node's engine log.",
        "ssh": "Open a shell on a node, or run a command on it.",
    }.items():
        app.command(name, help=f"{summary} (not built yet)",
                    context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(_not_built(name, 4))
