-- Question: what did the fleet decide, and why? (`spot events`)
-- Parameters: $since — TIMESTAMPTZ, events at or after it; $tier — VARCHAR, only that
--   tier's events (NULL: all, including the fleet-wide ones: the gate and the sampler); $last —
--   how many of the newest.
-- Output, oldest first: event_at (UTC), source, kind, tier, node, message, detail (JSON).
--   source 'fleet'   (fleet_events, migration 0005): a node's change of state (kind: the state
--                    it went to: waking, serving, hibernating, hibernated, ...) or a decision
--                    (kind: detail.kind where the gateway set it: woke, wake_failed, failover,
--                    recovered (failover and recovered once per tier change, not per worker);
--                    else 'decision', e.g. "gateway: request for tiny-chat held", "spot down");
--   source 'gate'    (gate_events, migration 0010): gate_opened / gate_closed, with the reason
--                    in words: over budget, billing unobservable, clock fault;
--   source 'billing' (billing_anomalies, migration 0008): billing_anomaly, a sample the ledger
--                    refused to count (decrease, missing_total, unexplained_first_total);
--   source 'sampler' (sample_runs): sample_failed, a run that could not read a provider's
--                    billing (ok = false); sampler_clock_behind, a run whose clock read behind
--                    the previous run's (clock_behind_s).
WITH events AS (
    SELECT event_at, 'fleet' AS source,
           coalesce(json_extract_string(detail, '$.kind'), to_state, 'decision') AS kind,
           tier, node,
           CASE WHEN to_state IS NOT NULL
                THEN coalesce(node, tier) || ': ' || coalesce(from_state, 'new') || ' -> ' || to_state || ' (' || reason || ')'
                ELSE reason END AS message,
           CAST(detail AS VARCHAR) AS detail
    FROM fleet_events
    UNION ALL
    SELECT event_at, 'gate',
           CASE WHEN open THEN 'gate_opened' ELSE 'gate_closed' END,
           NULL, NULL,
           CASE WHEN open THEN 'budget gate opened: ' ELSE 'budget gate closed: ' END
               || CASE WHEN clock_fault THEN 'clock fault'
                       WHEN reason = 'budget_exhausted' THEN 'over budget'
                       WHEN reason = 'billing_unobservable' THEN 'billing unobservable'
                       WHEN reason = 'no_budget' THEN 'billing observed, no daily budget'
                       WHEN reason = 'gate_off' THEN 'gate turned off'
                       WHEN reason = 'ok' THEN 'under budget'
                       ELSE reason END
               || ' (' || message || ')',
           CAST(json_merge_patch(coalesce(detail, '{}'),
                                 json_object('reason', reason, 'clock_fault', clock_fault)) AS VARCHAR)
    FROM gate_events
    UNION ALL
    SELECT a.sampled_at, 'billing', 'billing_anomaly', s.tier, a.name,
           'billing anomaly: ' || a.provider || ' ' || a.resource_type || ' ' || a.resource_id
               || coalesce(' (' || a.name || ')', '') || ': '
               || CASE a.kind
                      WHEN 'decrease' THEN 'the bill fell to $' || CAST(a.total_bill_usd AS VARCHAR)
                           || ' below its high-water mark $' || CAST(a.previous_high_usd AS VARCHAR) || ', counted nothing'
                      WHEN 'missing_total' THEN 'no readable total, a missing sample'
                      WHEN 'unexplained_first_total' THEN 'first seen with a bill of $' || CAST(a.total_bill_usd AS VARCHAR)
                           || ' and no create time, more than its rate could bill since the last good run:'
                           || ' taken as its baseline, counted nothing'
                      ELSE a.kind END,
           CAST(json_object('anomaly', a.kind, 'provider', a.provider, 'resource_type', a.resource_type,
                            'resource_id', a.resource_id, 'run_id', a.run_id,
                            'total_bill_usd', CAST(a.total_bill_usd AS VARCHAR),
                            'previous_high_usd', CAST(a.previous_high_usd AS VARCHAR)) AS VARCHAR)
    FROM billing_anomalies AS a
    LEFT JOIN billing_samples AS s
        ON s.run_id = a.run_id AND s.provider = a.provider AND s.resource_type = a.resource_type
       AND s.resource_id = a.resource_id
    UNION ALL
    SELECT finished_at, 'sampler', 'sample_failed', NULL, NULL,
           'billing sample failed for provider ' || provider || ': ' || coalesce(error, 'no error recorded'),
           CAST(json_object('provider', provider, 'run_id', run_id) AS VARCHAR)
    FROM sample_runs
    WHERE NOT ok
    UNION ALL
    SELECT finished_at, 'sampler', 'sampler_clock_behind', NULL, NULL,
           'the sampler''s clock read ' || CAST(round(clock_behind_s, 3) AS VARCHAR)
               || ' s behind its previous run''s (provider ' || provider || '): the run is ordered by sequence, not time',
           CAST(json_object('provider', provider, 'run_id', run_id, 'clock_behind_s', clock_behind_s) AS VARCHAR)
    FROM sample_runs
    WHERE clock_behind_s IS NOT NULL
)
SELECT event_at, source, kind, tier, node, message, detail
FROM (
    SELECT * FROM events
    WHERE event_at >= $since AND ($tier IS NULL OR tier = $tier)
    ORDER BY event_at DESC, source, message
    LIMIT $last
)
ORDER BY event_at, source, message;
