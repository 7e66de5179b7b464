-- Question: what did each resource's bill do at each of our samples, on the PROVIDER's timeline?
-- Parameters: $window_start, $window_end — TIMESTAMPTZ in the provider's clock: the good runs whose
--   provider_clock_at (the provider's HTTP Date at the sample) is in [start, end).
-- Output one row per counted sample (the ledger's rules: billing_increases, migration 0008), by
--   resource then run order: provider, resource_type, resource_id, name, tier, in_fleet, seq,
--   run_id, provider_clock_at, sampled_at (our clock), total_bill_usd (as the provider said),
--   increase_usd (what the ledger counted at this sample), cumulative_usd (the ledger's high-water
--   mark after this sample: the bill it measures from; cumulative_usd - increase_usd is where this
--   sample's increase starts).
-- Runs without a provider clock cannot be placed on the provider's timeline and are left out.
--   Every sample is read raw, day by day, never from the daily roll-up (which keeps no samples).
WITH runs AS (
    SELECT run_id, seq, provider_clock_at
    FROM sample_runs
    WHERE ok AND provider_clock_at >= $window_start AND provider_clock_at < $window_end
),
scan_span AS (  -- the same runs in OUR clock, to bound the ledger's scan
    SELECT min(b.sampled_at) AS s0, max(b.sampled_at) AS s1
    FROM billing_samples AS b JOIN runs AS r ON r.run_id = b.run_id
),
scan_days AS (  -- one scan per UTC day (our clock), each shifted 1 µs earlier so that none holds a
                -- whole day: billing_increases then reads raw samples, never the daily roll-up
    SELECT to_timestamp(d * 86400) - INTERVAL 1 MICROSECOND AS s,
           to_timestamp((d + 1) * 86400) - INTERVAL 1 MICROSECOND AS e
    FROM (SELECT unnest(range((epoch_us(s0) + 1) // 86400000000, (epoch_us(s1) + 1) // 86400000000 + 1)) AS d
          FROM scan_span WHERE s0 IS NOT NULL)
)
SELECT i.provider, i.resource_type, i.resource_id, s.name, i.tier, i.in_fleet, r.seq, i.run_id,
       r.provider_clock_at, i.sampled_at, i.total_bill_usd, i.increase_usd,
       CASE WHEN i.previous_high_usd IS NULL THEN i.total_bill_usd
            ELSE greatest(i.previous_high_usd, i.total_bill_usd) END AS cumulative_usd
FROM scan_days AS d, LATERAL billing_increases(d.s, d.e) AS i
JOIN runs AS r ON r.run_id = i.run_id
LEFT JOIN billing_samples AS s
    ON s.run_id = i.run_id AND s.provider = i.provider AND s.resource_type = i.resource_type
   AND s.resource_id = i.resource_id
ORDER BY i.provider, i.resource_type, i.resource_id, r.seq;
