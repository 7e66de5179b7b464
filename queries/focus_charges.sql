-- Question: what did each fleet resource cost in each hour of the window, as FOCUS 1.2 rows?
--   (`spot cost --focus FILE.csv|FILE.parquet`; spotinference/costs/focus.py writes them with COPY.)
-- Parameters: $window_start, $window_end — TIMESTAMPTZ, the window [start, end). `spot cost --focus`
--   passes the billed interval of `spot cost` (snapped to billing samples), so the rows' BilledCost
--   sums exactly to `spot cost`'s spend_usd.
-- Output: one row per fleet resource per UTC hour (the charge period) in which a counted billing
--   sample of it fell: the sum of the increases of its cumulative bill at those samples
--   (billing_increases, migration 0008, read one hour at a time so whole days are never taken
--   from the daily roll-up), so an hour shows what the bill grew by when it was read in that hour.
--   An hour without a good sample has no row (never $0): what accrued in a gap is on the row of the
--   hour of the first good sample after it. Outside-the-fleet resources are not exported (they are
--   not in `spot cost`'s spend either).
--   BilledCost = EffectiveCost = ListCost = ContractedCost (USD): the provider's bill is the only
--   price spot sees (no list price, negotiated discount or commitment to amortise is known).
--   ConsumedQuantity = PricingQuantity: hours billed = Σ increase / the sample's usd_per_hour (NULL
--   when no sample carried a rate). x_Tier; x_TokensServed, x_PromptTokens: the tokens the tier
--   finished in the same part of the hour (the tier's, repeated on each of its resources' rows: do
--   not sum them across resources); x_UsdPerMTok: the tier's spend in that part of the hour over
--   x_TokensServed × 1e6, NULL when it served no output tokens (never 0 for "unobserved").
WITH hours AS (
    SELECT h AS hour_start,
           greatest(h, $window_start) AS part_start,
           least(h + INTERVAL 1 HOUR, $window_end) AS part_end
    FROM range(date_trunc('hour', CAST($window_start AS TIMESTAMPTZ)), CAST($window_end AS TIMESTAMPTZ),
               INTERVAL 1 HOUR) AS t(h)
),
charges AS (
    SELECT hr.hour_start, hr.part_start, hr.part_end, i.provider, i.resource_type, i.resource_id,
           arg_max(i.tier, i.sampled_at) AS tier,
           sum(i.increase_usd) AS billed_usd,
           sum(CASE WHEN i.usd_per_hour > 0 THEN i.increase_usd / i.usd_per_hour END) AS billed_hours,
           arg_max(i.usd_per_hour, i.sampled_at) AS usd_per_hour
    FROM hours AS hr,
         LATERAL (SELECT * FROM billing_increases(hr.part_start, hr.part_end)) AS i
    WHERE i.in_fleet
    GROUP BY ALL
),
tier_spend AS (
    SELECT hour_start, tier, sum(billed_usd) AS spend_usd FROM charges GROUP BY ALL
),
served AS (
    SELECT hr.hour_start, r.tier,
           sum(r.completion_tokens) AS completion_tokens, sum(r.prompt_tokens) AS prompt_tokens
    FROM hours AS hr JOIN requests AS r
        ON r.finished_at >= hr.part_start AND r.finished_at < hr.part_end
    GROUP BY ALL
)
SELECT
    CAST(c.billed_usd AS DECIMAL(38, 9)) AS BilledCost,
    c.provider AS BillingAccountId,
    c.provider AS BillingAccountName,
    'USD' AS BillingCurrency,
    date_trunc('month', c.hour_start) + INTERVAL 1 MONTH AS BillingPeriodEnd,
    date_trunc('month', c.hour_start) AS BillingPeriodStart,
    'Usage' AS ChargeCategory,
    CAST(NULL AS VARCHAR) AS ChargeClass,  -- NULL: not a correction of an earlier period
    concat(c.resource_type, ' ', c.resource_id, coalesce(' (tier ' || c.tier || ')', ''),
           ': increase of its cumulative bill read by spot sample in this hour') AS ChargeDescription,
    'Usage-Based' AS ChargeFrequency,
    c.hour_start + INTERVAL 1 HOUR AS ChargePeriodEnd,
    c.hour_start AS ChargePeriodStart,
    CAST(c.billed_hours AS DECIMAL(38, 9)) AS ConsumedQuantity,
    'Hours' AS ConsumedUnit,
    CAST(c.billed_usd AS DECIMAL(38, 9)) AS ContractedCost,
    CAST(c.billed_usd AS DECIMAL(38, 9)) AS EffectiveCost,
    c.provider AS InvoiceIssuerName,
    CAST(c.billed_usd AS DECIMAL(38, 9)) AS ListCost,
    c.usd_per_hour AS ListUnitPrice,
    'Standard' AS PricingCategory,
    CAST(c.billed_hours AS DECIMAL(38, 9)) AS PricingQuantity,
    'Hours' AS PricingUnit,
    c.provider AS ProviderName,
    c.provider AS PublisherName,
    c.resource_id AS ResourceId,
    coalesce(f.name, c.resource_id) AS ResourceName,
    CASE c.resource_type WHEN 'vm' THEN 'Virtual Machine' WHEN 'volume' THEN 'Volume' ELSE c.resource_type END
        AS ResourceType,
    CASE c.resource_type WHEN 'vm' THEN 'Compute' WHEN 'volume' THEN 'Storage' ELSE 'Other' END AS ServiceCategory,
    CASE c.resource_type WHEN 'vm' THEN 'GPU virtual machines' WHEN 'volume' THEN 'Block storage volumes'
         ELSE c.resource_type END AS ServiceName,
    c.tier AS x_Tier,
    s.completion_tokens AS x_TokensServed,
    s.prompt_tokens AS x_PromptTokens,
    CASE WHEN s.completion_tokens > 0
         THEN CAST(t.spend_usd * 1000000 / s.completion_tokens AS DECIMAL(38, 6)) END AS x_UsdPerMTok
FROM charges AS c
LEFT JOIN fleet_resources AS f
    ON f.provider = c.provider AND f.resource_type = c.resource_type AND f.resource_id = c.resource_id
LEFT JOIN tier_spend AS t ON t.hour_start = c.hour_start AND t.tier IS NOT DISTINCT FROM c.tier
LEFT JOIN served AS s ON s.hour_start = c.hour_start AND s.tier IS NOT DISTINCT FROM c.tier
ORDER BY ChargePeriodStart, BillingAccountId, ResourceType, ResourceId;
