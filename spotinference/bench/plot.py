"""`spot bench --plot`: output throughput against latency across the sweep, as terminal text.

The knee of the curve is where the latency climbs while the throughput no longer does. Returns
lines; printing them is the CLI's job. The chart names the API the run benchmarked.
"""

from __future__ import annotations

from typing import Any

from .runner import saturation_figures

MARKS = {"gateway": "g", "direct": "d", "on-node": "n"}


def throughput_latency_chart(rows: list[dict[str, Any]], *, api: str, width: int = 56,
                             height: int = 14) -> list[str]:
    """One run's sweep (one API): a streamed API's output throughput against median TTFT; a
    non-streamed one's (embeddings) input throughput against median end-to-end latency."""
    throughput, latency = saturation_figures(api)
    points = [(r[throughput], r[latency], r) for r in rows
              if r.get(latency) is not None and r.get(throughput) is not None]
    if not points:
        return ["no completed requests to plot"]
    max_x = max(p[0] for p in points) or 1.0
    max_y = max(p[1] for p in points) or 1.0
    grid = [[" "] * width for _ in range(height)]
    for x, y, row in points:
        col = min(width - 1, round(x / max_x * (width - 1)))
        line = min(height - 1, round(y / max_y * (height - 1)))
        cell = grid[height - 1 - line][col]
        mark = MARKS.get(row["target"], "*")
        grid[height - 1 - line][col] = mark if cell in (" ", mark) else "*"
    lines = [f"--api {api}: {latency} (ms)"]
    for index, cells in enumerate(grid):
        value = max_y * (height - 1 - index) / (height - 1)
        tick = f"{value:8.1f} |" if index in (0, height // 2, height - 1) else "         |"
        lines.append(tick + "".join(cells))
    lines.append("         +" + "-" * width)
    lines.append(f"          0{'':>{width - 12}}{max_x:10.1f}")
    kind = throughput.split("_")[0]
    lines.append(f"{'':10}{kind} throughput (tok/s) →   marks: g gateway, d direct, n on-node, * overlap")
    for x, y, row in points:
        level = f"c={row['concurrency']}" if row.get("concurrency") is not None else f"rate={row.get('request_rate')}"
        lines.append(f"  {MARKS.get(row['target'], '*')} {level:<10} {x:10.1f} tok/s  {y:10.1f} ms")
    return lines
