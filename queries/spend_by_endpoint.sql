-- Question: what did serving each endpoint (route) cost in the window?
-- Parameters: $window_start, $window_end — TIMESTAMPTZ, the window [start, end).
-- Output per endpoint, largest first: endpoint (the route, e.g. /v1/chat/completions,
--   /v1/responses, /v1/messages; '(not recorded)' for requests logged before the gateway recorded
--   routes; NULL for spend of tiers that served no tokens), tiers (the tiers whose spend it
--   carries), spend_usd (USD), prompt_tokens, completion_tokens, usd_per_mtok_output (NULL
--   without output tokens).
-- Attribution: the spend_split macro (migration 0012), as spend_by_model.sql, by endpoint: each
--   tier's spend goes to the endpoints it served in the window, split by their share of the tier's prompt + completion
--   tokens, apportioned in whole micro-dollars by largest remainder, so rows sum exactly to the
--   window's spend.
SELECT grp AS endpoint, tiers, spend_usd, prompt_tokens, completion_tokens, usd_per_mtok_output
FROM spend_split($window_start, $window_end, 'endpoint')
ORDER BY spend_usd DESC, endpoint NULLS LAST;
