"""`spot bench --plot`: output throughput against latency across the sweep, as terminal text.

The knee of the curve is where the latency climbs while the throughput no longer does. Returns
lines; printing them is the CLI's job.
"""

from __future__ import annotations

from typing import Any

MARKS = {"gateway": "g", "direct": "d", "on-node": "n"}


def throughput_latency_chart(rows: list[dict[str, Any]], *, latency: str = "median_ttft_ms",
                             width: int = 56, height: int = 14) -> list[str]:
    points = [(r["output_throughput"], r[latency], r) for r in rows
              if r.get(latency) is not None and r.get("output_throughput") is not None]
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
    label_y = f"{latency} (ms)"
    lines = [label_y]
    for index, cells in enumerate(grid):
        value = max_y * (height - 1 - index) / (height - 1)
        tick = f"{value:8.1f} |" if index in (0, height // 2, height - 1) else "         |"
        lines.append(tick + "".join(cells))
    lines.append("         +" + "-" * width)
    lines.append(f"          0{'':>{width - 12}}{max_x:10.1f}")
    lines.append(f"{'':10}output throughput (tok/s) →   marks: g gateway, d direct, n on-node, * overlap")
    for x, y, row in points:
        level = f"c={row['concurrency']}" if row.get("concurrency") is not None else f"rate={row.get('request_rate')}"
        lines.append(f"  {MARKS.get(row['target'], '*')} {level:<10} {x:10.1f} tok/s  {y:10.1f} ms")
    return lines
