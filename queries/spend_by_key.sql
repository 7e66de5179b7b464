-- Question: what does each API key owe for the window (the pass-through statement)?
-- Parameters: $window_start, $window_end — TIMESTAMPTZ, the window [start, end).
-- Output per key, largest first: key_id ('(no key)' for requests without one; NULL when the
--   window's spend had no tokens to carry it), key_name (from api_keys), requests, prompt_tokens,
--   completion_tokens, token_share (0–1: the key's prompt + completion tokens over the window's),
--   statement_usd (USD: the window's spend × token_share).
-- Statements sum EXACTLY to the window's spend: shares are apportioned in whole micro-dollars
--   (the bill's precision) by largest remainder, ties to the smaller key_id. Spend in a window
--   with no tokens is one row with key_id NULL. Reports check observability first.
WITH spend AS (
    SELECT CAST(round(coalesce(sum(increase_usd), 0) * 1000000) AS HUGEINT) AS micro
    FROM billing_increases($window_start, $window_end) WHERE in_fleet
),
keys AS (
    SELECT coalesce(key_id, '(no key)') AS key_id, count(*) AS requests,
           sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens,
           CAST(sum(coalesce(prompt_tokens, 0) + coalesce(completion_tokens, 0)) AS HUGEINT) AS tokens
    FROM requests
    WHERE finished_at >= $window_start AND finished_at < $window_end
    GROUP BY 1
),
total AS (SELECT sum(tokens) AS tokens FROM keys),
base AS (
    SELECT k.*, s.micro,
           CASE WHEN t.tokens > 0 THEN k.tokens * s.micro // t.tokens ELSE 0 END AS floor_micro,
           CASE WHEN t.tokens > 0 THEN k.tokens * s.micro % t.tokens ELSE 0 END AS remainder,
           CASE WHEN t.tokens > 0 THEN k.tokens / t.tokens END AS token_share
    FROM keys AS k, spend AS s, total AS t
),
ranked AS (
    SELECT *,
           row_number() OVER (ORDER BY remainder DESC, key_id) AS rank,
           micro - sum(floor_micro) OVER () AS leftover
    FROM base
),
statements AS (
    SELECT key_id, requests, prompt_tokens, completion_tokens, token_share,
           floor_micro + CASE WHEN rank <= leftover THEN 1 ELSE 0 END AS statement_micro
    FROM ranked
    UNION ALL  -- spend with no tokens at all to carry it
    SELECT NULL, 0, 0, 0, NULL, s.micro
    FROM spend AS s, total AS t
    WHERE coalesce(t.tokens, 0) = 0 AND s.micro <> 0
)
SELECT
    s.key_id,
    a.name AS key_name,
    s.requests,
    s.prompt_tokens,
    s.completion_tokens,
    s.token_share,
    CAST(s.statement_micro AS DECIMAL(38, 0)) * 0.000001 AS statement_usd
FROM statements AS s
LEFT JOIN api_keys AS a ON a.key_id = s.key_id
ORDER BY statement_usd DESC, s.key_id NULLS LAST;
