-- Question: what did a token cost recently, per tier and across the fleet (invoice-true)?
-- Parameters: $window_start, $window_end — TIMESTAMPTZ, the window [start, end); the gateway's
--   key budgets pass the trailing day up to the last good billing sample.
-- Output per tier, plus one row with tier NULL for the whole fleet: spend_usd (USD, the fleet's
--   billed increases, billing_increases as in spend.sql), tokens (prompt + completion finished in
--   the window; a NULL count adds nothing), micro_usd_per_token = spend × 1e6 / tokens (NULL when
--   no tokens were served). Resources and requests with no tier are '(no tier)'.
WITH spend AS (
    SELECT coalesce(tier, '(no tier)') AS tier, sum(increase_usd) AS spend_usd
    FROM billing_increases($window_start, $window_end) WHERE in_fleet GROUP BY 1
),
tok AS (
    SELECT coalesce(tier, '(no tier)') AS tier, sum(coalesce(prompt_tokens, 0) + coalesce(completion_tokens, 0)) AS tokens
    FROM requests
    WHERE finished_at >= $window_start AND finished_at < $window_end
    GROUP BY 1
),
tiers AS (
    SELECT tier, coalesce(s.spend_usd, 0) AS spend_usd, coalesce(t.tokens, 0) AS tokens
    FROM spend AS s FULL OUTER JOIN tok AS t USING (tier)
),
rows AS (
    SELECT tier, spend_usd, tokens FROM tiers
    UNION ALL
    SELECT NULL, coalesce(sum(spend_usd), 0), coalesce(sum(tokens), 0) FROM tiers
)
SELECT tier, spend_usd, tokens,
       CASE WHEN tokens > 0 THEN CAST(spend_usd AS DOUBLE) * 1000000 / tokens END AS micro_usd_per_token
FROM rows
ORDER BY tier NULLS FIRST;
