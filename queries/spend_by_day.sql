-- Question: what did each UTC day of the window spend and serve, and what did output cost?
-- Parameters: $window_start, $window_end — TIMESTAMPTZ, the window [start, end).
-- Output per UTC day touched by the window, oldest first: day (DATE), spend_usd (USD; NULL when
--   the day's part of the window had no ok sampler run), prompt_tokens, completion_tokens,
--   usd_per_mtok_output (USD per million output tokens; NULL without output tokens or spend),
--   coverage (0–1, share of the day's minutes inside the window with an ok run).
-- Attribution: an increase belongs to the day of its LATER sample (sampled_at, UTC), so the bill
--   accrued between the last sample before midnight and the first after it lands on the new day,
--   and spend accrued during a sampler gap lands on the day the gap ended. Tokens belong to the
--   day their request finished. Clipped to the window: the first and last day may be partial.
WITH days AS (
    SELECT CAST(d AS DATE) AS day,
           greatest(to_timestamp(epoch(CAST(d AS DATE)) ), $window_start) AS day_start,
           least(to_timestamp(epoch(CAST(d AS DATE)) + 86400), $window_end) AS day_end
    FROM generate_series(
        DATE '1970-01-01' + CAST(epoch_us($window_start) // 86400000000 AS INTEGER),
        DATE '1970-01-01' + CAST((epoch_us($window_end) - 1) // 86400000000 AS INTEGER),
        INTERVAL 1 DAY) AS t(d)
),
spend AS (
    SELECT day, sum(increase_usd) AS spend FROM billing_increases($window_start, $window_end) WHERE in_fleet GROUP BY day
),
tok AS (
    SELECT DATE '1970-01-01' + CAST(epoch_us(finished_at) // 86400000000 AS INTEGER) AS day,
           sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens
    FROM requests
    WHERE finished_at >= $window_start AND finished_at < $window_end
    GROUP BY day
),
cov AS (
    SELECT DATE '1970-01-01' + CAST(epoch_us(started_at) // 86400000000 AS INTEGER) AS day,
           count(DISTINCT epoch_us(started_at) // 60000000) AS covered
    FROM sample_runs
    WHERE ok AND started_at >= $window_start AND started_at < $window_end
    GROUP BY day
)
SELECT
    d.day,
    CASE WHEN coalesce(c.covered, 0) > 0 THEN coalesce(s.spend, 0) END AS spend_usd,
    coalesce(t.prompt_tokens, 0) AS prompt_tokens,
    coalesce(t.completion_tokens, 0) AS completion_tokens,
    CASE WHEN coalesce(c.covered, 0) > 0 AND t.completion_tokens > 0
         THEN CAST(coalesce(s.spend, 0) * 1000000 / t.completion_tokens AS DECIMAL(38, 6)) END AS usd_per_mtok_output,
    coalesce(c.covered, 0)
        / ((epoch_us(d.day_end) - 1) // 60000000 - epoch_us(d.day_start) // 60000000 + 1) AS coverage
FROM days AS d
LEFT JOIN spend AS s USING (day)
LEFT JOIN tok AS t USING (day)
LEFT JOIN cov AS c USING (day)
ORDER BY d.day;
