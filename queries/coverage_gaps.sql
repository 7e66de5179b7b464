-- Question: when in the window was billing NOT observed (no ok sampler run)?
-- Parameters: $window_start, $window_end — TIMESTAMPTZ, the window [start, end).
-- Output: one row per gap, oldest first: gap_start, gap_end (TIMESTAMPTZ, UTC minute boundaries
--   clipped to the window; the gap is [gap_start, gap_end)), minutes. A minute is covered when an ok run started in it.
--   Spend accrued in a gap is not lost: it lands on the first good sample after it.
WITH bounds AS (
    SELECT epoch_us($window_start) // 60000000 AS m0,
           (epoch_us($window_end) - 1) // 60000000 AS m1
),
good AS (
    SELECT DISTINCT epoch_us(started_at) // 60000000 AS m
    FROM sample_runs
    WHERE ok AND started_at >= $window_start AND started_at < $window_end
),
edges AS (  -- the covered minutes, framed by sentinels just outside the window
    SELECT m FROM good
    UNION ALL SELECT m0 - 1 FROM bounds
    UNION ALL SELECT m1 + 1 FROM bounds
),
steps AS (
    SELECT m AS covered, lead(m) OVER (ORDER BY m) AS next_covered FROM edges
)
SELECT
    greatest(to_timestamp((covered + 1) * 60), $window_start) AS gap_start,
    least(to_timestamp(next_covered * 60), $window_end)       AS gap_end,
    next_covered - covered - 1             AS minutes
FROM steps
WHERE next_covered - covered > 1
ORDER BY gap_start;
