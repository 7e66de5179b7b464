-- Question: what were the newest requests through the gateway? (`spot requests`)
-- Parameters: $last — how many rows, newest first.
-- Units: times UTC; ttft_ms in milliseconds; tokens as the engine counted them.
SELECT
    r.request_id        AS id,
    r.model,
    r.tier,
    r.node,
    k.name              AS key_name,
    r.started_at,
    r.finished_at,
    r.ttft_ms,
    r.prompt_tokens,
    r.completion_tokens,
    r.http_status       AS status,
    r.finish_reason,
    r.client_aborted    AS aborted,
    r.streamed,
    r.error
FROM requests AS r
LEFT JOIN api_keys AS k ON k.key_id = r.key_id
ORDER BY r.started_at DESC, r.finished_at DESC
LIMIT $last;
