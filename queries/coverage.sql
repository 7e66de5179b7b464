-- Question: how much of the window could each provider account's billing be observed?
-- Parameters: $window_start, $window_end — TIMESTAMPTZ, the window [start, end).
-- Output per provider account that has ever run, by provider: provider, window_minutes (whole or
--   partial UTC minutes the window touches), covered_minutes (minutes in which an ok sampler run
--   of that account started), coverage = covered / window (0–1). Coverage is per account: one
--   account failing for an hour is an hour of gap even while another samples fine.
WITH bounds AS (
    SELECT epoch_us($window_start) // 60000000 AS m0,
           (epoch_us($window_end) - 1) // 60000000 AS m1
),
accounts AS (SELECT DISTINCT provider FROM sample_runs),
good AS (
    SELECT provider, count(DISTINCT epoch_us(started_at) // 60000000) AS covered
    FROM sample_runs
    WHERE ok AND started_at >= $window_start AND started_at < $window_end
    GROUP BY provider
)
SELECT
    a.provider,
    greatest(m1 - m0 + 1, 0)                                   AS window_minutes,
    coalesce(g.covered, 0)                                     AS covered_minutes,
    CASE WHEN m1 >= m0 THEN coalesce(g.covered, 0) / (m1 - m0 + 1) END AS coverage
FROM accounts AS a CROSS JOIN bounds LEFT JOIN good AS g USING (provider)
ORDER BY a.provider;
