-- Question: what did each kind of resource spend in the window: GPU VMs vs weights volumes?
-- Parameters: $window_start, $window_end — TIMESTAMPTZ, the window [start, end).
-- Output per resource_type (vm, volume, ...), largest first: resources (count billed in the
--   window), spend_usd (USD), share (0–1 of the window's spend; NULL when it is 0).
-- The band covers what the provider bills for the fleet; the gateway's own machine and egress
--   are outside it.
WITH spend AS (
    SELECT resource_type, count(DISTINCT (provider, resource_id)) AS resources, sum(increase_usd) AS spend_usd
    FROM billing_increases($window_start, $window_end) GROUP BY 1
)
SELECT
    resource_type,
    resources,
    spend_usd,
    CASE WHEN sum(spend_usd) OVER () > 0 THEN spend_usd / sum(spend_usd) OVER () END AS share
FROM spend
ORDER BY spend_usd DESC, resource_type;
