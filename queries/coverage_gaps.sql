-- Question: when in the window was each account's billing NOT observed (no ok sampler run)?
-- Parameters: $window_start, $window_end — TIMESTAMPTZ, the window [start, end).
-- Output one row per account and gap, oldest first: provider, gap_start, gap_end (TIMESTAMPTZ,
--   UTC minute boundaries clipped to the window; the gap is [gap_start, gap_end)), minutes.
--   A minute is covered for an account when an ok run of that account started in it. Spend
--   accrued in a gap is not lost: it lands on the account's first good sample after it.
WITH bounds AS (
    SELECT epoch_us($window_start) // 60000000 AS m0,
           (epoch_us($window_end) - 1) // 60000000 AS m1
),
accounts AS (SELECT DISTINCT provider FROM sample_runs),
good AS (
    SELECT DISTINCT provider, epoch_us(started_at) // 60000000 AS m
    FROM sample_runs
    WHERE ok AND started_at >= $window_start AND started_at < $window_end
),
edges AS (  -- each account's covered minutes, framed by sentinels just outside the window
    SELECT provider, m FROM good
    UNION ALL SELECT provider, m0 - 1 FROM accounts, bounds
    UNION ALL SELECT provider, m1 + 1 FROM accounts, bounds
),
steps AS (
    SELECT provider, m AS covered, lead(m) OVER (PARTITION BY provider ORDER BY m) AS next_covered FROM edges
)
SELECT
    provider,
    greatest(to_timestamp((covered + 1) * 60), $window_start) AS gap_start,
    least(to_timestamp(next_covered * 60), $window_end)       AS gap_end,
    next_covered - covered - 1             AS minutes
FROM steps
WHERE next_covered - covered > 1
ORDER BY gap_start, provider;
