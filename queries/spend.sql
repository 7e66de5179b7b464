-- Question: what did the fleet spend in the window, by the provider's own bill?
-- Parameters: $window_start, $window_end — TIMESTAMPTZ, the window [start, end).
-- Output: spend_usd (USD, DECIMAL; NULL when unobservable, never 0 then), observable (an ok
--   sampler run started inside the window), good_runs (count), resources (billed in the window).
-- Spend = sum of increases of each resource's cumulative bill between consecutive samples whose
-- later sample falls in the window (counter resets and new resources: see billing_increases in
-- migration 0006). An idle fleet with healthy billing reads 0.
WITH runs AS (
    SELECT count(*) AS good_runs FROM sample_runs
    WHERE ok AND started_at >= $window_start AND started_at < $window_end
),
inc AS (
    SELECT sum(increase_usd) AS spend, count(DISTINCT (provider, resource_type, resource_id)) AS resources
    FROM billing_increases($window_start, $window_end)
)
SELECT
    CASE WHEN good_runs > 0 THEN coalesce(spend, 0) END AS spend_usd,
    good_runs > 0 AS observable,
    good_runs,
    resources
FROM runs, inc;
