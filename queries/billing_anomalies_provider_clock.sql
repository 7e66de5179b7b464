-- Question: which samples did the ledger refuse to count, placed on the PROVIDER's timeline?
-- Parameters: $window_start, $window_end — TIMESTAMPTZ in the provider's clock (the run's
--   provider_clock_at, its HTTP Date) in [start, end).
-- Output, in run order: provider, resource_type, resource_id, name, kind ('decrease' | 'missing_total' |
--   'unexplained_first_total', see billing_anomalies.sql), total_bill_usd, previous_high_usd, run_id, seq,
--   provider_clock_at, sampled_at (our clock).
SELECT a.provider, a.resource_type, a.resource_id, a.name, a.kind, a.total_bill_usd, a.previous_high_usd,
       a.run_id, r.seq, r.provider_clock_at, a.sampled_at
FROM billing_anomalies AS a JOIN sample_runs AS r ON r.run_id = a.run_id
WHERE r.provider_clock_at >= $window_start AND r.provider_clock_at < $window_end
ORDER BY r.seq, a.provider, a.resource_type, a.resource_id;
