-- Question: which billing samples did the ledger refuse to count, and why?
-- Parameters: $window_start, $window_end — TIMESTAMPTZ, the window [start, end).
-- Output, oldest first: sampled_at, provider, resource_type, resource_id, name, kind
--   ('decrease': the total fell below the resource's high-water mark and counted nothing;
--   'missing_total': the provider gave no readable total, a missing sample;
--   'unexplained_first_total': a resource first seen after its account's first good run, with no
--   create time and a total its rate could not have billed since that run: older than the runs
--   that missed it, so a baseline that counted nothing), total_bill_usd,
--   previous_high_usd, run_id, raw (the provider's item, as it came).
-- The sampler records them as it writes each good run (spotinference.billing.anomalies), by the
-- rules of billing_increases (migrations 0008 and 0015).
SELECT sampled_at, provider, resource_type, resource_id, name, kind, total_bill_usd, previous_high_usd, run_id, raw
FROM billing_anomalies
WHERE sampled_at >= $window_start AND sampled_at < $window_end
ORDER BY sampled_at, provider, resource_type, resource_id;
