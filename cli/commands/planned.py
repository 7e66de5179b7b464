"""Commands the product will have but that are not built yet: each says so and exits 3.

They are real entries in `spot --help` so the whole shape of the tool is visible from day one,
and they never print made-up output.
"""

from __future__ import annotations

import typer

# Every command of the product is built now; the mechanism stays for the next one (and
# `money.register` borrows `_not_built` for a stub it replaces).
PLANNED: dict[str, tuple[str, int]] = {}


def register(app: typer.Typer) -> None:
    for name, (summary, issue) in PLANNED.items():
        app.command(
            name,
            help=f"{summary} (not built yet)",
            context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        )(_not_built(name, issue))


def _not_built(name: str, issue: int):  # noqa: ANN202
    def command(ctx: typer.Context) -> None:
        from spotinference.errors import NotBuiltError

        raise NotBuiltError(
            f"`spot {name}` is not built yet",
            hint=f"it arrives with issue #{issue}; nothing was done",
        )

    command.__name__ = name
    return command
