-- Question: how much of the window could billing be observed?
-- Parameters: $window_start, $window_end — TIMESTAMPTZ, the window [start, end).
-- Output: window_minutes (whole or partial UTC minutes the window touches), covered_minutes
--   (minutes in which an ok sampler run started), coverage = covered / window (0–1).
WITH bounds AS (
    SELECT epoch_us($window_start) // 60000000 AS m0,
           (epoch_us($window_end) - 1) // 60000000 AS m1
),
good AS (
    SELECT count(DISTINCT epoch_us(started_at) // 60000000) AS covered
    FROM sample_runs
    WHERE ok AND started_at >= $window_start AND started_at < $window_end
)
SELECT
    greatest(m1 - m0 + 1, 0)                                   AS window_minutes,
    covered                                                    AS covered_minutes,
    CASE WHEN m1 >= m0 THEN covered / (m1 - m0 + 1) END        AS coverage
FROM bounds, good;
