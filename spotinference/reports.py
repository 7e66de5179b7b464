"""Runs the report SQL in `queries/`: one question per file, named by its file stem."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

from .errors import InputError
from .store import Store

_PARAM = re.compile(r"\$([a-z_][a-z0-9_]*)")
_COMMENT = re.compile(r"--[^\n]*")


@dataclass(frozen=True)
class QueryResult:
    name: str
    columns: list[str]
    rows: list[tuple[Any, ...]]

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


def available_queries() -> list[str]:
    files = resources.files("spotinference.queries")
    return sorted(e.name.removesuffix(".sql") for e in files.iterdir() if e.name.endswith(".sql"))


def query_text(name: str) -> str:
    if name not in available_queries():
        raise InputError(f"no query named {name!r} (expected one of: {', '.join(available_queries())})")
    return resources.files("spotinference.queries").joinpath(f"{name}.sql").read_text()


def query_parameters(name: str) -> set[str]:
    """The ``$name`` parameters a query expects."""
    return set(_PARAM.findall(_COMMENT.sub("", query_text(name))))


def run_query(store: Store, name: str, **params: Any) -> QueryResult:
    """Run one query file read-only, after flushing spooled rows so the answer is current."""
    with query_session(store) as run:
        return run(name, **params)


@contextmanager
def query_session(store: Store) -> Iterator[Callable[..., QueryResult]]:
    """``run(name, **params)`` for several query files over one flush and one read-only
    connection: a report that asks six questions opens the database once, not six times."""
    store.flush()
    with store.reading() as con:

        def run(name: str, **params: Any) -> QueryResult:
            sql = query_text(name)
            expected = query_parameters(name)
            if set(params) != expected:
                raise InputError(f"query {name!r} takes parameters {sorted(expected)}, was given {sorted(params)}")
            cursor = con.execute(sql, params or None)
            columns = [d[0] for d in cursor.description or []]
            return QueryResult(name, columns, cursor.fetchall())

        yield run
