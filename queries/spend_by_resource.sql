-- Question: what did each resource spend in the window, and is it still billing? (`spot cost --by
--   resource`: a weights volume left after `spot down --terminate` shows here by name.)
-- Parameters: $window_start, $window_end — TIMESTAMPTZ, the window [start, end).
-- Output one row per billed resource, the fleet's first, largest spend first: provider,
--   resource_type (vm, volume, ...), resource_id, name (what spot recorded for the fleet's
--   resources, else the provider's name at a sample of the window's last two days; NULL when
--   neither is known), tier, in_fleet (false: billed to the account but not created or adopted by
--   spot, never in the headline), spend_usd (USD), share (0–1 of the FLEET's spend; NULL outside
--   the fleet or when it is 0), usd_per_hour (the provider's rate at the resource's last
--   sample in the window; NULL or 0 once it stopped billing, NULL when that sample is older than
--   the window's last two days), last_sampled_at (its last counted sample in the window).
WITH spend AS (
    SELECT provider, resource_type, resource_id, in_fleet,
           arg_max(tier, sampled_at) AS tier,
           sum(increase_usd) AS spend_usd,
           max(sampled_at) AS last_sampled_at,
    FROM billing_increases($window_start, $window_end)
    GROUP BY provider, resource_type, resource_id, in_fleet
),
recent AS (  -- raw samples of the window's last two days (cheap: they are stored in time order)
    SELECT provider, resource_type, resource_id,
           arg_max(name, sampled_at) FILTER (WHERE name IS NOT NULL) AS name,
           arg_max_null(usd_per_hour, sampled_at) AS usd_per_hour,  -- NULL: no rate, it stopped
           max(sampled_at) AS sampled_at
    FROM billing_samples
    WHERE sampled_at >= greatest($window_start, $window_end - INTERVAL 2 DAY) AND sampled_at < $window_end
    GROUP BY provider, resource_type, resource_id
)
SELECT
    s.provider,
    s.resource_type,
    s.resource_id,
    coalesce(f.name, n.name) AS name,
    coalesce(s.tier, f.tier) AS tier,
    s.in_fleet,
    s.spend_usd,
    CASE WHEN s.in_fleet AND sum(s.spend_usd) FILTER (WHERE s.in_fleet) OVER () > 0
         THEN s.spend_usd / sum(s.spend_usd) FILTER (WHERE s.in_fleet) OVER () END AS share,
    -- the rate of the resource's last sample in the window (a missing total still has a rate)
    CASE WHEN n.sampled_at >= s.last_sampled_at THEN n.usd_per_hour END AS usd_per_hour,
    s.last_sampled_at
FROM spend AS s
LEFT JOIN fleet_resources AS f
    ON f.provider = s.provider AND f.resource_type = s.resource_type AND f.resource_id = s.resource_id
LEFT JOIN recent AS n
    ON n.provider = s.provider AND n.resource_type = s.resource_type AND n.resource_id = s.resource_id
ORDER BY s.in_fleet DESC, s.spend_usd DESC, s.resource_type, s.resource_id;
