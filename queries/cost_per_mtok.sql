-- Question: what did a million tokens cost in the window (the headline)?
-- Parameters: $window_start, $window_end — TIMESTAMPTZ, the window [start, end). `spot cost`
--   passes a window whose ends are billing samples (billing_bounds.sql), so spend and tokens
--   cover one interval: the bill between two samples over the tokens finished between them.
-- Output: spend_usd (USD, the fleet's; NULL when unobservable), outside_fleet_usd (the rest of
--   the account: never in the quotient), prompt_tokens, completion_tokens (tokens, by
--   finished_at; a NULL count is unknown and adds nothing), usd_per_mtok_output = spend /
--   completion tokens × 1e6 (all spend is carried by output tokens), usd_per_mtok_total = spend /
--   (prompt + completion) × 1e6; both NULL when no such tokens were served or the window is
--   unobservable. observable: an ok sampler run started inside the window.
-- Spend as in spend.sql (billing_increases, migration 0008); tokens as in tokens.sql.
WITH runs AS (
    SELECT count(*) AS good_runs FROM sample_runs
    WHERE ok AND started_at >= $window_start AND started_at < $window_end
),
inc AS (
    SELECT coalesce(sum(increase_usd) FILTER (WHERE in_fleet), 0) AS spend,
           coalesce(sum(increase_usd) FILTER (WHERE NOT in_fleet), 0) AS outside
    FROM billing_increases($window_start, $window_end)
),
tok AS (
    SELECT coalesce(sum(prompt_tokens), 0) AS prompt_tokens,
           coalesce(sum(completion_tokens), 0) AS completion_tokens
    FROM requests
    WHERE finished_at >= $window_start AND finished_at < $window_end
)
SELECT
    CASE WHEN good_runs > 0 THEN spend END AS spend_usd,
    CASE WHEN good_runs > 0 THEN outside END AS outside_fleet_usd,
    prompt_tokens,
    completion_tokens,
    CASE WHEN good_runs > 0 AND completion_tokens > 0
         THEN CAST(spend * 1000000 / completion_tokens AS DECIMAL(38, 6)) END AS usd_per_mtok_output,
    CASE WHEN good_runs > 0 AND prompt_tokens + completion_tokens > 0
         THEN CAST(spend * 1000000 / (prompt_tokens + completion_tokens) AS DECIMAL(38, 6)) END AS usd_per_mtok_total,
    good_runs > 0 AS observable
FROM runs, inc, tok;
