"""`spot db`: the database's schema version, migrations and spool."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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


@app.command("export")
def export(
    ctx: typer.Context,
    to: Annotated[str, typer.Option("--to", help="ducklake (the [store] lake in the config) or parquet (files in --dir).")],
    directory: Annotated[Path | None, typer.Option("--dir", help="With --to parquet: a new directory to write.")] = None,
    from_dir: Annotated[Path | None, typer.Option("--from", help="With --to ducklake: a --to parquet directory instead of the file store.")] = None,
    json: JsonOption = False,
) -> None:
    """Move the file store in the data directory into the configured DuckLake, every table's rows counted."""
    from spotinference.errors import InputError
    from spotinference.store.export import export_to_lake, export_to_parquet

    state: CliState = ctx.obj
    if to == "ducklake":
        exported = export_to_lake(state.settings, from_dir)
        where = state.store().location
    elif to == "parquet":
        if directory is None:
            raise InputError("--to parquet needs --dir DIR (a new directory for the tables' Parquet files)")
        exported = export_to_parquet(state.settings, directory)
        where = str(directory)
    else:
        raise InputError(f"--to {to!r} is not a store spot exports to (expected ducklake or parquet)")
    if json:
        print_json({"to": where, "tables": [{"table": t.table, "rows": t.rows} for t in exported]})
        return
    print_table(None, ["table", "rows"], [(t.table, t.rows) for t in exported])
    typer.echo(f"exported {sum(t.rows for t in exported)} row(s) in {len(exported)} table(s) into {where}; "
               "every table's rows counted on both sides")
