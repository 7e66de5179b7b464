-- Question: what did each tier spend and serve in the window?
-- Parameters: $window_start, $window_end — TIMESTAMPTZ, the window [start, end).
-- Output per tier, largest spend first: tier ('(no tier)' for resources the sampler could not
--   place, e.g. a shared volume), spend_usd (USD, from billing_samples.tier), prompt_tokens,
--   completion_tokens (from requests.tier, by finished_at), usd_per_mtok_output (NULL when the
--   tier served no output tokens). Rows sum to the window's spend (spend.sql). Reports check
--   observability first (an unobservable window has no spend to break down).
WITH spend AS (
    SELECT coalesce(tier, '(no tier)') AS tier, sum(increase_usd) AS spend_usd
    FROM billing_increases($window_start, $window_end) WHERE in_fleet GROUP BY 1
),
tok AS (
    SELECT coalesce(tier, '(no tier)') AS tier,
           sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens
    FROM requests
    WHERE finished_at >= $window_start AND finished_at < $window_end
    GROUP BY 1
)
SELECT
    tier,
    coalesce(s.spend_usd, 0) AS spend_usd,
    coalesce(t.prompt_tokens, 0) AS prompt_tokens,
    coalesce(t.completion_tokens, 0) AS completion_tokens,
    CASE WHEN t.completion_tokens > 0 THEN CAST(coalesce(s.spend_usd, 0) * 1000000 / t.completion_tokens AS DECIMAL(38, 6)) END
        AS usd_per_mtok_output
FROM spend AS s FULL OUTER JOIN tok AS t USING (tier)
ORDER BY spend_usd DESC, tier;
