-- Question: how many tokens did the gateway serve in the window?
-- Parameters: $window_start, $window_end — TIMESTAMPTZ, the window [start, end).
-- Output: requests (count), prompt_tokens, completion_tokens, total_tokens (tokens as the engine
--   counted them), unknown_prompt_rows, unknown_completion_rows (rows whose count is NULL:
--   work the engine did that no usage object described, e.g. a stream aborted before its first
--   chunk; the sums leave them out, so these say how much the sums may fall short). A request
--   counts in the window where it FINISHED (finished_at): its row is written then and its token
--   counts are final then. Every outcome counts (errors and aborted streams keep the tokens the
--   GPU produced).
SELECT
    count(*)                                  AS requests,
    coalesce(sum(prompt_tokens), 0)           AS prompt_tokens,
    coalesce(sum(completion_tokens), 0)       AS completion_tokens,
    coalesce(sum(prompt_tokens), 0) + coalesce(sum(completion_tokens), 0) AS total_tokens,
    count(*) FILTER (WHERE prompt_tokens IS NULL)     AS unknown_prompt_rows,
    count(*) FILTER (WHERE completion_tokens IS NULL) AS unknown_completion_rows
FROM requests
WHERE finished_at >= $window_start AND finished_at < $window_end;
