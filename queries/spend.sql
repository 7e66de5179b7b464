-- Question: what did the fleet spend in the window, by the provider's own bill?
-- Parameters: $window_start, $window_end — TIMESTAMPTZ, the window [start, end).
-- Output: spend_usd (USD, the fleet's: what spot created or adopted; NULL when unobservable,
--   never 0 then), outside_fleet_usd (the rest of the account), account_spend_usd (both),
--   observable (an ok sampler run started inside the window), good_runs (count), resources
--   (fleet resources billed in the window).
-- Spend = the sum of the increases of each resource's cumulative bill (billing_increases,
-- migration 0008: ordered by run, measured from the high-water mark, baselines per account)
-- whose sample falls in the window. An idle fleet with healthy billing reads 0.
WITH runs AS (
    SELECT count(*) AS good_runs FROM sample_runs
    WHERE ok AND started_at >= $window_start AND started_at < $window_end
),
inc AS (
    SELECT sum(increase_usd) FILTER (WHERE in_fleet) AS spend,
           sum(increase_usd) FILTER (WHERE NOT in_fleet) AS outside,
           count(DISTINCT (provider, resource_type, resource_id)) FILTER (WHERE in_fleet) AS resources
    FROM billing_increases($window_start, $window_end)
)
SELECT
    CASE WHEN good_runs > 0 THEN coalesce(spend, 0) END AS spend_usd,
    CASE WHEN good_runs > 0 THEN coalesce(outside, 0) END AS outside_fleet_usd,
    CASE WHEN good_runs > 0 THEN coalesce(spend, 0) + coalesce(outside, 0) END AS account_spend_usd,
    good_runs > 0 AS observable,
    good_runs,
    resources
FROM runs, inc;
