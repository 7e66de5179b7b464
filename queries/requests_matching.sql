-- Question: which of the newest requests match the filters? (`spot requests --key/--model/--status/--since`,
--   and `--follow`'s polls for what finished since)
-- Parameters: $last — how many rows, newest first; the filters, each NULL for "any":
--   $key_name (the client key's name), $model, $status_min/$status_max (HTTP status range),
--   $since (started at or after), $after (finished strictly after).
-- Units: times UTC; ttft_ms and wake_wait_ms in milliseconds; tokens as the engine counted them.
SELECT
    r.request_id        AS id,
    r.model,
    r.endpoint,                             -- the route; NULL for rows logged before it was recorded
    r.tier,
    r.node,
    k.name              AS key_name,
    r.started_at,
    r.finished_at,
    r.ttft_ms,
    r.wake_wait_ms,
    r.prompt_tokens,
    r.completion_tokens,
    r.http_status       AS status,
    r.finish_reason,
    r.client_aborted    AS aborted,
    r.streamed,
    r.error
FROM requests AS r
LEFT JOIN api_keys AS k ON k.key_id = r.key_id
WHERE (CAST($key_name AS VARCHAR) IS NULL OR k.name = $key_name)
  AND (CAST($model AS VARCHAR) IS NULL OR r.model = $model)
  AND (CAST($status_min AS INTEGER) IS NULL OR r.http_status BETWEEN $status_min AND $status_max)
  AND (CAST($since AS TIMESTAMPTZ) IS NULL OR r.started_at >= $since)
  AND (CAST($after AS TIMESTAMPTZ) IS NULL OR r.finished_at > $after)
ORDER BY r.started_at DESC, r.finished_at DESC
LIMIT $last;
