"""`spot db`: the database's schema version, migrations and spool."""

from __future__ import annotations

import typer

from ..output import print_json, print_table
from ..state import CliState
from .options import JsonOption

app = typer.Typer(help="The database: schema version, migrations, spooled rows.", no_args_is_help=True)


@app.command("status")
def status(ctx: typer.Context, json: JsonOption = False) -> None:
    """Show the schema version, pending migrations, spooled rows and table sizes."""
    from spotinference.reports import run_query

    state: CliState = ctx.obj
    store = state.store()
    tables = run_query(store, "db_tables").records()
    schema = store.schema_status()
    waiting, rejected = store.spool_files()
    data = {
        "database": store.location,
        "version": schema.version,
        "latest": schema.latest,
        "pending": schema.pending,
        "spool_segments_waiting": waiting,
        "spool_segments_rejected": rejected,
        "tables": tables,
    }
    if json:
        print_json(data)
        return
    typer.echo(f"database  {store.location}")
    typer.echo(f"schema    v{schema.version} of {schema.latest}" + (f", pending: {', '.join(schema.pending)}" if schema.pending else ""))
    typer.echo(f"spool     {waiting} segment(s) waiting, {rejected} rejected")
    print_table(None, ["table", "rows"], [(t["table_name"], t["row_count"]) for t in tables])


@app.command("migrate")
def migrate(ctx: typer.Context, json: JsonOption = False) -> None:
    """Apply pending migrations (every command also does this on first open)."""
    state: CliState = ctx.obj
    store = state.store()
    applied = store.migrate()
    version = store.schema_status().version
    if json:
        print_json({"applied": applied, "version": version})
    elif applied:
        typer.echo(f"applied {', '.join(applied)}; schema is now v{version}")
    else:
        typer.echo(f"schema is current (v{version})")


@app.command("flush")
def flush(ctx: typer.Context, json: JsonOption = False) -> None:
    """Copy spooled rows (the request log) into the database now."""
    state: CliState = ctx.obj
    result = state.store().flush()
    data = {
        "segments": result.segments,
        "rows": result.rows,
        "discarded_bytes": result.discarded_bytes,
        "rejected": result.rejected,
    }
    if json:
        print_json(data)
    else:
        typer.echo(f"flushed {result.rows} row(s) from {result.segments} segment(s)")
        for problem in result.rejected:
            typer.echo(f"rejected (kept on disk): {problem}", err=True)
    if result.rejected:
        raise typer.Exit(1)
