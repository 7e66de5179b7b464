"""The billing roll-up on a DuckLake walks each quiet day once (issue 20): the seeded ledger's
samples are all on 2026-03-01, so a report run months later used to walk every day since then
again on each run, a catalog transaction per week of days."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.lake_fixtures import new_lake

pytestmark = pytest.mark.slow

SEED = Path(__file__).parent / "workers" / "seed_ledger.py"

# Refreshes the roll-up of the lake the config names twice at the same time, then once a day
# later, and prints what each refresh reports it walked, the days holding rows, and whether the
# seeded day's report (billing_daily read for the whole day once rolled) is the raw one.
REFRESH_TWICE = """
import json, sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from spotinference.config import load_settings
from spotinference.costs import Window, report, rollup
from spotinference.store import Store
settings, _ = load_settings(Path(sys.argv[1]))
store = Store.from_settings(settings)
now = datetime(2026, 5, 1, 2, 0, tzinfo=UTC)
day = Window(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC))
raw = report(store, day, refresh_rollup=False)
walked = [rollup.refresh(store, now), rollup.refresh(store, now), rollup.refresh(store, now + timedelta(days=1))]
with store.reading() as con:
    days = [str(d) for (d,) in con.execute("SELECT DISTINCT day FROM billing_daily ORDER BY day").fetchall()]
rolled = report(store, day, refresh_rollup=False)
print(json.dumps({"walked": walked, "days": days, "same_report": rolled == raw, "spend": str(raw.spend_usd)}))
"""


def test_a_second_refresh_on_the_lake_does_not_walk_the_quiet_days_again(lake_venv, postgres, tmp_path):
    lake = new_lake(postgres, tmp_path, tmp_path / "lake-home")
    seeded = lake_venv.run_python(SEED.read_text(), str(lake.config), env=lake.env)
    assert seeded.returncode == 0, seeded.stderr
    done = lake_venv.run_python(REFRESH_TWICE, str(lake.config), env=lake.env)
    assert done.returncode == 0, done.stderr
    # 2026-03-01 .. 2026-04-30 walked once (61 days, one with rows); then nothing; then one day.
    result = json.loads(done.stdout)
    assert {k: result[k] for k in ("walked", "days", "same_report")} == {
        "walked": [61, 0, 1], "days": ["2026-03-01"], "same_report": True}
    assert float(result["spend"]) > 0  # a report with spend in it
