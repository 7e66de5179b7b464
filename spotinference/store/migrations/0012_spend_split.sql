-- spend_split(window_start, window_end, group_by): the fleet's spend in the window split over
-- what each tier served, one row per group of ``group_by`` ('model' or 'endpoint'). The one rule behind
-- `spot cost --by model` and `--by endpoint` (queries/spend_by_model.sql, spend_by_endpoint.sql).
-- Billing knows tiers, not models or routes: each tier's spend goes to the groups that tier served
-- in the window (requests.tier), split by their share of the tier's prompt + completion tokens,
-- apportioned in whole micro-dollars by largest remainder, so rows sum exactly to the window's
-- spend. A tier whose requests carried no tokens keeps its spend on its first group; a tier that
-- billed but served nothing gives a NULL-group row. Requests logged before the gateway recorded
-- routes group as '(not recorded)' by endpoint.
-- Columns: grp, tiers (the tiers whose spend it carries), spend_usd, prompt_tokens,
-- completion_tokens, usd_per_mtok_output (NULL without output tokens); largest spend first.
CREATE OR REPLACE MACRO spend_split(window_start, window_end, group_by) AS TABLE
WITH tier_spend AS (
    SELECT coalesce(tier, '(no tier)') AS tier,
           CAST(round(sum(increase_usd) * 1000000) AS HUGEINT) AS micro
    FROM billing_increases(window_start, window_end) WHERE in_fleet GROUP BY 1
),
served AS (
    SELECT coalesce(tier, '(no tier)') AS tier,
           CASE group_by WHEN 'endpoint' THEN coalesce(endpoint, '(not recorded)') ELSE model END AS grp,
           sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens,
           CAST(sum(coalesce(prompt_tokens, 0) + coalesce(completion_tokens, 0)) AS HUGEINT) AS tokens
    FROM requests
    WHERE finished_at >= window_start AND finished_at < window_end
    GROUP BY 1, 2
),
shares AS (
    SELECT v.*, coalesce(s.micro, 0) AS micro, sum(v.tokens) OVER (PARTITION BY v.tier) AS tier_tokens
    FROM served AS v LEFT JOIN tier_spend AS s USING (tier)
),
base AS (
    SELECT *,
           CASE WHEN tier_tokens > 0 THEN tokens * micro // tier_tokens ELSE 0 END AS floor_micro,
           CASE WHEN tier_tokens > 0 THEN tokens * micro % tier_tokens ELSE 0 END AS remainder
    FROM shares
),
ranked AS (
    SELECT *,
           row_number() OVER (PARTITION BY tier ORDER BY remainder DESC, grp) AS rank,
           micro - sum(floor_micro) OVER (PARTITION BY tier) AS leftover
    FROM base
),
parts AS (
    SELECT grp, tier, prompt_tokens, completion_tokens,
           floor_micro + CASE WHEN tier_tokens = 0 AND rank = 1 THEN leftover
                              WHEN tier_tokens > 0 AND rank <= leftover THEN 1 ELSE 0 END AS micro
    FROM ranked
    UNION ALL  -- tiers that billed but served nothing
    SELECT NULL, s.tier, 0, 0, s.micro
    FROM tier_spend AS s
    WHERE s.tier NOT IN (SELECT tier FROM served) AND s.micro <> 0
)
SELECT
    grp,
    string_agg(DISTINCT tier, ', ' ORDER BY tier) AS tiers,
    CAST(sum(micro) AS DECIMAL(38, 0)) * 0.000001 AS spend_usd,
    sum(prompt_tokens) AS prompt_tokens,
    sum(completion_tokens) AS completion_tokens,
    CASE WHEN sum(completion_tokens) > 0
         THEN CAST(sum(micro) / sum(completion_tokens) AS DECIMAL(38, 6)) END
        AS usd_per_mtok_output
FROM parts
GROUP BY grp
ORDER BY spend_usd DESC, grp NULLS LAST;
