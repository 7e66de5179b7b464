"""`spot cost --plot`: the terminal chart and the image file, checked as a user would see them.

The store holds a year of billing samples (one sampler run every 6 hours, a VM billing $1/hour)
with holes: no sampler run at all on 2026-11-25 (one day) nor from 2026-06-01 to 2026-06-10 (ten
days). Requests finish every day at noon, the unobserved days included. A day without an observed
bill must be a gap in the chart, never a $0 bar: the tests read the PNG's pixels in the gap's
x-range and in an observed day's.
"""

from __future__ import annotations

import os
import shutil
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from spotinference.store import Store
from tests.test_cost_queries import Seed

image = pytest.importorskip("matplotlib.image", reason="`spot cost --plot FILE.png` needs the [plot] extra")

from spotinference.costs.plot import BAR_COLOUR, LINE_COLOUR, UNOBSERVED_COLOUR  # noqa: E402

FIRST_RUN = datetime(2025, 11, 20, tzinfo=UTC)
LAST_RUN = datetime(2026, 11, 30, 12, tzinfo=UTC)
GAP_DAY = date(2026, 11, 25)
LONG_GAP = (date(2026, 6, 1), date(2026, 6, 11))  # [first, last) days without a sampler run
RUN_EVERY = timedelta(hours=6)


def unobserved(day: date) -> bool:
    return day == GAP_DAY or LONG_GAP[0] <= day < LONG_GAP[1]


@pytest.fixture(scope="module")
def year_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seeded data directory, built once (about 15 s) and copied for each test."""
    built = tmp_path_factory.mktemp("year") / "home"
    seed = Seed(Store(built))
    t = FIRST_RUN
    while t <= LAST_RUN:
        if not unobserved(t.date()):
            hours = int((t - FIRST_RUN).total_seconds() // 3600)
            seed.sample(seed.run(t), t, "vm-1", str(Decimal(hours)), rate="1")  # $1 an hour, cumulative
        t += RUN_EVERY
    day = FIRST_RUN.date()
    while day <= LAST_RUN.date():
        seed.request(datetime(day.year, day.month, day.day, 12, tzinfo=UTC), 1000, 2000)
        day += timedelta(days=1)
    seed.write(anomalies_at_once=True)
    return built


@pytest.fixture
def year(home: Path, year_store: Path) -> Path:
    shutil.copytree(year_store, home, dirs_exist_ok=True)
    return home


def at(day: date, hour: float = 12.0) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(hours=hour)


# -- reading the image ------------------------------------------------------------------------------

class Chart:
    """A written PNG, with its two panels found from their black frames (spines): spend bars on
    top, $/M output tokens below, the x axis spanning exactly the window asked for."""

    def __init__(self, path: Path, start: datetime, end: datetime) -> None:
        self.pixels = image.imread(str(path))[:, :, :3]
        self.start, self.end = start, end
        dark = (self.pixels < 0.2).all(axis=2)
        height, width = dark.shape
        columns = [x for x in range(width) if dark[:, x].sum() > 0.3 * height]
        assert columns, "no axes frame found in the image"
        self.left, self.right = min(columns), max(columns)
        rows = [y for y in range(height) if dark[y, self.left:self.right].sum() > 0.9 * (self.right - self.left)]
        frames: list[list[int]] = []
        for y in rows:  # each spine is a few rows thick: group neighbouring rows
            if frames and y - frames[-1][-1] <= 2:
                frames[-1].append(y)
            else:
                frames.append([y])
        assert len(frames) == 4, f"expected two stacked panels, found horizontal spines at {frames}"
        self.panels = [(frames[0][-1] + 1, frames[1][0]), (frames[2][-1] + 1, frames[3][0])]

    def x(self, t: datetime) -> int:
        share = (t - self.start) / (self.end - self.start)
        return round(self.left + share * (self.right - self.left))

    def has(self, colour: str, panel: int, first: datetime, last: datetime) -> bool:
        """Whether any pixel of ``colour`` is inside the panel between the two times."""
        rgb = tuple(int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5))
        top, bottom = self.panels[panel]
        x0, x1 = sorted((self.x(first), self.x(last)))
        region = self.pixels[top + 2:bottom - 1, max(x0, self.left + 2):min(x1, self.right - 1) + 1]
        return bool((abs(region - rgb) < 0.06).all(axis=2).any())


def plot_png(spot, tmp_path: Path, since: str, until: str, name: str = "cost.png") -> Chart:
    target = tmp_path / name
    result = spot("cost", "--since", since, "--until", until, "--plot", str(target))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote {target}"
    return Chart(target, datetime.fromisoformat(since).replace(tzinfo=UTC),
                 datetime.fromisoformat(until).replace(tzinfo=UTC))


# -- the gap is a gap, at every window size -----------------------------------------------------------

def test_a_week_with_an_unobserved_day(spot, year: Path, tmp_path: Path) -> None:
    chart = plot_png(spot, tmp_path, "2026-11-21T00:00", "2026-11-28T00:00")
    inside = (3, 21)  # hours of a day, away from the bars' edges
    gap = (at(GAP_DAY, inside[0]), at(GAP_DAY, inside[1]))
    assert not chart.has(BAR_COLOUR, 0, *gap), "the unobserved day is drawn as a bar"
    assert chart.has(UNOBSERVED_COLOUR, 0, *gap), "the unobserved day is not marked as unobserved"
    assert not chart.has(LINE_COLOUR, 1, *gap), "the $/M output line is drawn across the unobserved day"
    for day in (date(2026, 11, 21), date(2026, 11, 24), date(2026, 11, 26), date(2026, 11, 27)):
        assert chart.has(BAR_COLOUR, 0, at(day, inside[0]), at(day, inside[1])), f"no bar on {day}"
    assert chart.has(LINE_COLOUR, 1, at(date(2026, 11, 22), 0), at(date(2026, 11, 23), 23))


def test_one_day_bars_span_the_hours_they_cover(spot, year: Path, tmp_path: Path) -> None:
    # 09:30 on the 24th to 09:30 on the 25th: the 24th is billed up to its last sample (18:00);
    # nothing was sampled after it, so from 18:00 on nothing may look billed.
    chart = plot_png(spot, tmp_path, "2026-11-24T09:30", "2026-11-25T09:30")
    assert chart.has(BAR_COLOUR, 0, at(date(2026, 11, 24), 10), at(date(2026, 11, 24), 17.5))
    assert not chart.has(BAR_COLOUR, 0, at(date(2026, 11, 24), 18.5), at(GAP_DAY, 9.3))
    assert chart.has(UNOBSERVED_COLOUR, 0, at(GAP_DAY, 1), at(GAP_DAY, 9))


def test_a_month_and_a_year(spot, year: Path, tmp_path: Path) -> None:
    month = plot_png(spot, tmp_path, "2026-11-01T00:00", "2026-12-01T00:00", "month.png")
    assert not month.has(BAR_COLOUR, 0, at(GAP_DAY, 4), at(GAP_DAY, 20))
    assert month.has(BAR_COLOUR, 0, at(date(2026, 11, 24), 4), at(date(2026, 11, 24), 20))
    assert not month.has(LINE_COLOUR, 1, at(GAP_DAY, 4), at(GAP_DAY, 20))
    # The last sample is at 12:00 on the 30th: the rest of the month is not billed yet.
    assert not month.has(BAR_COLOUR, 0, at(date(2026, 11, 30), 14), at(date(2026, 12, 1), -0.5))

    year_chart = plot_png(spot, tmp_path, "2025-12-01T00:00", "2026-12-01T00:00", "year.png")
    gap = (at(LONG_GAP[0], 36), at(LONG_GAP[1], -36))
    assert not year_chart.has(BAR_COLOUR, 0, *gap), "ten unobserved days are drawn as bars"
    assert year_chart.has(UNOBSERVED_COLOUR, 0, *gap)
    assert not year_chart.has(LINE_COLOUR, 1, *gap)
    assert year_chart.has(BAR_COLOUR, 0, at(date(2026, 5, 20)), at(date(2026, 5, 28)))
    assert year_chart.has(LINE_COLOUR, 1, at(date(2026, 5, 20)), at(date(2026, 5, 28)))


def test_svg_and_pdf_are_written_too(spot, year: Path, tmp_path: Path) -> None:
    for name in ("cost.svg", "cost.PDF"):
        target = tmp_path / name
        result = spot("cost", "--since", "2026-11-21", "--until", "2026-11-28", "--plot", str(target))
        assert result.returncode == 0, result.stderr
        assert target.stat().st_size > 1000


# -- the terminal chart ---------------------------------------------------------------------------------

def test_the_terminal_chart_says_unobserved_never_zero(spot, year: Path) -> None:
    result = spot("cost", "--since", "2026-11-21", "--until", "2026-11-28", "--plot", env={"COLUMNS": "120"})
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line[:4] == "2026"}
    assert list(lines) == [f"2026-11-{d}" for d in range(21, 28)]
    assert "unobserved" in lines["2026-11-25"] and "█" not in lines["2026-11-25"] and "$" not in lines["2026-11-25"]
    assert "$24.00" in lines["2026-11-24"] and "█" in lines["2026-11-24"]

    # Every day of the window has its line, also the days the bill has not reached yet.
    tail = spot("cost", "--since", "2026-11-29", "--until", "2026-12-02", "--plot")
    assert tail.returncode == 0, tail.stderr
    days = {line.split()[0]: line for line in tail.stdout.splitlines() if line[:4] == "2026"}
    assert list(days) == ["2026-11-29", "2026-11-30", "2026-12-01"]
    assert "not billed yet" in days["2026-12-01"] and "$" not in days["2026-12-01"]

    # A day's part of the window says which hours it covers: up to the last sample, then nothing.
    one_day = spot("cost", "--since", "2026-11-24T09:30", "--until", "2026-11-25T09:30", "--plot")
    assert one_day.returncode == 0, one_day.stderr
    rows = [line.split() for line in one_day.stdout.splitlines() if line[:4] == "2026"]
    assert [row[:3] for row in rows] == [["2026-11-24", "09:30-18:00", "$12.00"],
                                         ["2026-11-25", "00:00-09:30", "not"]]


# -- a bad target is one line and exit 2 ---------------------------------------------------------------

@pytest.mark.parametrize("name, words", [
    ("missing/cost.png", ["does not exist"]),
    ("a-file/cost.png", ["not a directory"]),
    ("cost.jpg", ["'.jpg'", ".png", ".svg", ".pdf"]),
    ("cost", [".png"]),
    (".", ["is a directory"]),
])
def test_a_bad_target_is_one_line_and_exit_2(spot, year: Path, tmp_path: Path, name: str, words: list[str]) -> None:
    (tmp_path / "a-file").write_text("not a directory\n")
    result = spot("cost", "--days", "7", "--plot", str(tmp_path / name))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "internal error" not in lines[0], lines
    for word in words:
        assert word in lines[0], lines[0]
    assert result.stdout == ""


def test_an_unwritable_directory_is_one_line_and_exit_2(spot, year: Path, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # Root may write into any directory it can chmod, but sysfs refuses new files to anyone:
        # the refusal then comes from the write itself, not from the check before it.
        target, why = Path("/sys/cost.png"), "Permission denied"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target, why = locked / "cost.png", "not writable"
    result = spot("cost", "--days", "7", "--plot", str(target))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert why in result.stderr and str(target) in result.stderr and "internal error" not in result.stderr
    assert not target.exists()
