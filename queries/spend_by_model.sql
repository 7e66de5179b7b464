-- Question: what did serving each model cost in the window?
-- Parameters: $window_start, $window_end — TIMESTAMPTZ, the window [start, end).
-- Output per model, largest first: model (NULL for spend of tiers that served no tokens, e.g.
--   idle or volume-only spend), tiers (the tiers whose spend it carries), spend_usd (USD),
--   prompt_tokens, completion_tokens, usd_per_mtok_output (NULL without output tokens).
-- Attribution: billing knows tiers, not models. Each tier's spend (billing_samples.tier) goes to
--   the models that tier served in the window (requests.tier), split by their share of the tier's
--   prompt + completion tokens, apportioned in whole micro-dollars by largest remainder, so rows
--   sum exactly to the window's spend. A tier without tokens keeps its spend on a NULL-model row.
--   The rule is the spend_split macro (migration 0012), shared with spend_by_endpoint.sql.
SELECT grp AS model, tiers, spend_usd, prompt_tokens, completion_tokens, usd_per_mtok_output
FROM spend_split($window_start, $window_end, 'model')
ORDER BY spend_usd DESC, model NULLS LAST;
