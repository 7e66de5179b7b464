"""Tables and Markdown say human column titles (`$/M output tokens`), and empty lists say what to do next;
--json and --csv keep the machine names (issue 22, items 7 and 9)."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest

from tests.test_cli_cost import WINDOW, seeded, seeded_once  # noqa: F401 - the seeded data directory fixtures

BY = ["day", "tier", "model", "key", "resource", "type", "utilisation"]
SQL_NAME = re.compile(r"\b[a-z]+(?:_[a-z]+)+\b")  # usd_per_mtok_output, spend_usd, key_id ...


def header_words(table: str, title: str) -> str:
    """The header lines of the rich table titled `title` (between its top border and its ┡ rule)."""
    lines = table.split(title, 1)[1].splitlines()
    end = next(i for i, line in enumerate(lines) if line.startswith("┡"))
    return " ".join(lines[:end])


@pytest.mark.parametrize("by", BY)
def test_breakdown_tables_have_human_titles(spot, seeded: Path, by: str) -> None:  # noqa: F811
    result = spot("cost", *WINDOW, "--by", by)
    assert result.returncode == 0, result.stderr
    header = header_words(result.stdout, f"by {by}")
    assert SQL_NAME.findall(header) == [], header


def test_the_titles_people_look_for(spot, seeded: Path) -> None:  # noqa: F811
    wide = {"COLUMNS": "200"}
    day = spot("cost", *WINDOW, "--by", "day", env=wide).stdout
    assert "$/M output tokens" in header_words(day, "by day") and "usd_per_mtok_output" not in day
    resource = spot("cost", *WINDOW, "--by", "resource", env=wide).stdout
    assert "in the fleet" in header_words(resource, "by resource") and "│ yes" in resource and "│ no" in resource


def test_markdown_has_human_titles(spot, seeded: Path) -> None:  # noqa: F811
    page = spot("cost", *WINDOW, "--by", "day", "--markdown").stdout
    [header] = [line for line in page.split("## By day", 1)[1].splitlines() if line.startswith("| ")][:1]
    assert header == "| day (UTC) | spend | prompt tokens | output tokens | $/M output tokens | billing coverage |"


def test_json_and_csv_keep_machine_names(spot, seeded: Path) -> None:  # noqa: F811
    data = json.loads(spot("cost", *WINDOW, "--by", "day", "--json").stdout)
    assert "usd_per_mtok_output" in data["rows"][0]
    rows = list(csv.DictReader(io.StringIO(spot("cost", *WINDOW, "--by", "day", "--csv").stdout)))
    assert list(rows[0]) == ["day", "spend_usd", "prompt_tokens", "completion_tokens", "usd_per_mtok_output", "coverage"]


@pytest.mark.parametrize("by", ["key", "resource"])
def test_an_empty_breakdown_says_what_to_do(spot, home: Path, by: str) -> None:
    result = spot("cost", "--days", "1", "--by", by, env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    assert f"by {by}: no rows: " in result.stdout and "widen it (--days, --since)" in result.stdout
    page = spot("cost", "--days", "1", "--by", by, "--markdown").stdout
    assert f"## By {by}" in page and f"by {by}: no rows: " in page


def test_no_keys_yet_says_how_to_make_one(spot) -> None:
    result = spot("keys", "list")
    assert result.returncode == 0 and result.stdout.strip() == "no keys yet: spot keys create NAME"
    assert json.loads(spot("keys", "list", "--json").stdout) == []


def test_reconcile_with_no_sample_says_what_to_do(spot) -> None:
    result = spot("cost", "reconcile", env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    assert "no samples placed on the provider's clock in this span: run `spot sample`" in result.stdout
