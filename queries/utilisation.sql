-- Question: how much of the GPU time we paid for was serving requests?
-- Parameters: $window_start, $window_end — TIMESTAMPTZ, the window [start, end).
-- Output per tier: tier, vms (GPU VMs billed), paid_gpu_hours (VM-hours: minutes in which a VM's
--   sample showed it billing at its full rate — its highest usd_per_hour in the window, > 0 —
--   over 60), busy_hours (hours in which the tier had at least one request in flight: UTC minutes
--   from each request's start to its finish, merged), busy_share = busy / paid (NULL when 0).
-- Caveats: a minute counts as paid only when a sample landed in it (coverage gaps undercount);
--   a VM that never left a reduced-rate state in the window counts at that rate.
WITH vm AS (
    SELECT coalesce(tier, '(no tier)') AS tier, provider, resource_id, usd_per_hour,
           epoch_us(sampled_at) // 60000000 AS minute,
           max(usd_per_hour) OVER (PARTITION BY provider, resource_id) AS full_rate
    FROM billing_samples
    WHERE resource_type = 'vm' AND active
      AND sampled_at >= $window_start AND sampled_at < $window_end
      AND run_id IN (SELECT run_id FROM sample_runs WHERE ok)
),
paid AS (
    SELECT tier, count(DISTINCT (provider, resource_id)) AS vms,
           count(DISTINCT (provider, resource_id, minute)) FILTER (WHERE usd_per_hour = full_rate AND full_rate > 0) AS minutes
    FROM vm GROUP BY tier
),
busy AS (
    SELECT tier, count(DISTINCT minute) AS minutes
    FROM (
        SELECT coalesce(tier, '(no tier)') AS tier,
               unnest(range(greatest(epoch_us(started_at), epoch_us($window_start)) // 60000000,
                            (least(epoch_us(finished_at), epoch_us($window_end) - 1)) // 60000000 + 1)) AS minute
        FROM requests
        WHERE finished_at >= $window_start AND started_at < $window_end
    )
    GROUP BY tier
)
SELECT
    tier,
    coalesce(p.vms, 0) AS vms,
    coalesce(p.minutes, 0) / 60 AS paid_gpu_hours,
    coalesce(b.minutes, 0) / 60 AS busy_hours,
    CASE WHEN p.minutes > 0 THEN coalesce(b.minutes, 0) / p.minutes END AS busy_share
FROM paid AS p FULL OUTER JOIN busy AS b USING (tier)
ORDER BY tier;
