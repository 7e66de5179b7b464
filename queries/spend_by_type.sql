-- Question: what did each kind of resource spend in the window: GPU VMs vs weights volumes?
-- (`spot cost --by type`; `--by resource` names each resource.)
-- Parameters: $window_start, $window_end — TIMESTAMPTZ, the window [start, end).
-- Output per resource_type of the fleet (vm, volume, ...), largest first, then one row per type
--   of the rest of the account: resource_type, in_fleet (false: billed to the account but not
--   created or adopted by spot, never in the headline), resources (count billed in the window),
--   spend_usd (USD), share (0–1 of the FLEET's spend; NULL outside the fleet or when it is 0).
-- The band covers what the provider bills for the fleet; the gateway's own machine and egress
--   are outside it.
WITH spend AS (
    SELECT resource_type, in_fleet, count(DISTINCT (provider, resource_id)) AS resources, sum(increase_usd) AS spend_usd
    FROM billing_increases($window_start, $window_end) GROUP BY 1, 2
)
SELECT
    resource_type,
    in_fleet,
    resources,
    spend_usd,
    CASE WHEN in_fleet AND sum(spend_usd) FILTER (WHERE in_fleet) OVER () > 0
         THEN spend_usd / sum(spend_usd) FILTER (WHERE in_fleet) OVER () END AS share
FROM spend
ORDER BY in_fleet DESC, spend_usd DESC, resource_type;
