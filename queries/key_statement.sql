-- Question: beside each key's statement (spend_by_key.sql), what were its budgets, how much of its
--   budget reservations was released, and how many requests did each of its own limits refuse?
-- Parameters: $window_start, $window_end — TIMESTAMPTZ, the window [start, end) (requests by finished_at,
--   as spend_by_key.sql).
-- Output per key with a row in the window: key_id ('(no key)' as spend_by_key.sql), daily_budget_usd and
--   monthly_budget_usd (the key's settings now; NULL: none), reservations_released_usd (USD: Σ over its
--   requests of the worst case reserved against its budgets − what the request settled at, both in whole
--   micro-dollars as the gateway wrote them in `extra`; NULL when no request of the key was reserved),
--   refused_rpm … refused_model_not_allowed (requests refused by each limit: `extra.refused`, written by
--   the gateway; see gateway/key_refusals.py).
-- Released is not spend: the statement is the bill × token share and never includes it.
WITH rows AS (
    SELECT coalesce(key_id, '(no key)') AS key_id,
           json_extract_string(extra, '$.refused') AS refused,
           TRY_CAST(json_extract(extra, '$.reserved_micro') AS HUGEINT) AS reserved_micro,
           TRY_CAST(json_extract(extra, '$.settled_micro') AS HUGEINT) AS settled_micro
    FROM requests
    WHERE finished_at >= $window_start AND finished_at < $window_end
),
per_key AS (
    SELECT key_id,
           sum(reserved_micro - settled_micro) AS released_micro,
           count(*) FILTER (WHERE refused = 'rpm') AS refused_rpm,
           count(*) FILTER (WHERE refused = 'tpm') AS refused_tpm,
           count(*) FILTER (WHERE refused = 'concurrency') AS refused_concurrency,
           count(*) FILTER (WHERE refused = 'budget') AS refused_budget,
           count(*) FILTER (WHERE refused = 'price_unknown') AS refused_price_unknown,
           count(*) FILTER (WHERE refused = 'expired') AS refused_expired,
           count(*) FILTER (WHERE refused = 'model_not_allowed') AS refused_model_not_allowed
    FROM rows
    GROUP BY 1
)
SELECT
    p.key_id,
    a.daily_usd AS daily_budget_usd,
    a.monthly_usd AS monthly_budget_usd,
    CAST(p.released_micro AS DECIMAL(38, 0)) * 0.000001 AS reservations_released_usd,
    p.refused_rpm, p.refused_tpm, p.refused_concurrency, p.refused_budget,
    p.refused_price_unknown, p.refused_expired, p.refused_model_not_allowed
FROM per_key AS p
LEFT JOIN api_keys AS a ON a.key_id = p.key_id
ORDER BY p.key_id;
