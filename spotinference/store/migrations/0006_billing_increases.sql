-- Invoice-true spend, defined once for every report in queries/.
--
-- A billing sample's INCREASE is its resource's cumulative bill (total_bill_usd) minus the same
-- resource's previous sample (its latest earlier sample from an ok run):
--   * a decrease is a counter reset: the new value itself is the increase, never negative spend;
--   * a resource with no earlier sample counts its whole bill (it appeared since the last run),
--     except in the first ok run ever recorded, which is the baseline (bill accrued before spot
--     watched is not spend of any window);
--   * only samples from ok sample_runs count; a failed run's rows are ignored.
-- Spend over [window_start, window_end) is the sum of the increases of the samples whose time
-- (sampled_at: the LATER sample of each pair) falls in the window. Spend accrued during a sampler
-- gap is therefore not lost: it lands on the first good sample after the gap (coverage says so).
-- Days are UTC days of sampled_at; 1 day = 86 400 000 000 µs (epoch arithmetic, no time zone).

-- billing_daily: the same increases summed per UTC day and resource, for whole days that ended
-- over an hour before the roll-up was refreshed (spotinference.costs.rollup.refresh). Reports
-- read it for the whole days inside a window and raw samples for the rest, so a year-long report
-- reads ~73 k roll-up rows instead of ~100 M samples. Rows are only ever appended for days after
-- the last rolled day, so the result is the same as computing from raw samples (tested).
CREATE TABLE billing_daily (
    day              DATE NOT NULL,            -- UTC day of the samples
    provider         VARCHAR NOT NULL,
    resource_id      VARCHAR NOT NULL,         -- ids are per provider and per type (VM 1 ≠ volume 1)
    resource_type    VARCHAR NOT NULL,
    tier             VARCHAR,
    spend_usd        DECIMAL(38, 6) NOT NULL,  -- sum of the day's increases
    samples          BIGINT NOT NULL,
    last_sampled_at  TIMESTAMPTZ NOT NULL,     -- the day's last sample: the next day's "previous"
    last_total_usd   DECIMAL(18, 6) NOT NULL
);

-- billing_increases(window_start, window_end): one row per counted sample in the window with its
-- increase (USD), plus one row per resource and rolled-up whole day inside the window (then
-- sampled_at is that day's last sample and usd_per_hour is null). Columns: day (DATE, UTC),
-- provider, resource_id, resource_type, tier, sampled_at, usd_per_hour, total_bill_usd, increase_usd.
-- A resource is (provider, resource_type, resource_id): Hyperstack numbers VMs and volumes apart.
CREATE MACRO billing_increases(window_start, window_end) AS TABLE
WITH
rolled AS (
    SELECT coalesce(max(day) - DATE '1970-01-01' + 1, 0) AS until_d FROM billing_daily
),
first_ok AS (
    SELECT arg_min(run_id, started_at) AS run_id FROM sample_runs WHERE ok
),
bounds AS (
    SELECT *,
        least(ws_d, until_d) AS head_scan_d,                            -- raw lookback of the head
        CASE WHEN roll_from_d < roll_to_d THEN roll_from_d END AS mid_from_d,
        CASE WHEN roll_from_d < roll_to_d THEN roll_to_d END AS mid_to_d
    FROM (
        SELECT
            epoch_us(window_start) // 86400000000 AS ws_d,
            epoch_us(window_start) // 86400000000
                + CAST(epoch_us(window_start) % 86400000000 > 0 AS INTEGER) AS roll_from_d,
            least(epoch_us(window_end) // 86400000000, until_d) AS roll_to_d,
            until_d
        FROM rolled
    )
),
-- Raw segments: 1 = the window up to the first rolled day (or all of it), 2 = after the last.
raw AS (
    SELECT 1 AS seg, b.run_id, b.sampled_at, b.provider, b.resource_id, b.resource_type, b.tier, b.usd_per_hour, b.total_bill_usd
    FROM billing_samples AS b, bounds AS x
    WHERE b.sampled_at >= to_timestamp(x.head_scan_d * 86400)
      AND b.sampled_at < coalesce(to_timestamp(x.mid_from_d * 86400), window_end)
    UNION ALL
    SELECT 2 AS seg, b.run_id, b.sampled_at, b.provider, b.resource_id, b.resource_type, b.tier, b.usd_per_hour, b.total_bill_usd
    FROM billing_samples AS b, bounds AS x
    WHERE b.sampled_at >= to_timestamp(x.mid_to_d * 86400)
      AND b.sampled_at < window_end
),
prev_rolled AS (  -- each resource's last rolled-up sample before each segment's raw lookback
    SELECT s.seg, d.provider, d.resource_type, d.resource_id, arg_max(d.last_total_usd, d.last_sampled_at) AS total_bill_usd
    FROM billing_daily AS d, bounds AS x,
         (SELECT 1 AS seg UNION ALL SELECT 2) AS s
    WHERE d.day < DATE '1970-01-01' + CAST(CASE s.seg WHEN 1 THEN x.head_scan_d ELSE x.mid_to_d END AS INTEGER)
    GROUP BY s.seg, d.provider, d.resource_type, d.resource_id
),
lagged AS (
    SELECT r.*,
        lag(r.total_bill_usd) OVER (PARTITION BY r.seg, r.provider, r.resource_type, r.resource_id ORDER BY r.sampled_at, r.run_id) AS prev_raw
    FROM raw AS r
    WHERE r.run_id IN (SELECT run_id FROM sample_runs WHERE ok)
)
SELECT
    DATE '1970-01-01' + CAST(epoch_us(l.sampled_at) // 86400000000 AS INTEGER) AS day,
    l.provider, l.resource_id, l.resource_type, l.tier, l.sampled_at, l.usd_per_hour, l.total_bill_usd,
    CASE
        WHEN coalesce(l.prev_raw, p.total_bill_usd) IS NULL
            THEN CASE WHEN l.run_id = (SELECT run_id FROM first_ok) THEN 0 ELSE l.total_bill_usd END
        WHEN l.total_bill_usd >= coalesce(l.prev_raw, p.total_bill_usd)
            THEN l.total_bill_usd - coalesce(l.prev_raw, p.total_bill_usd)
        ELSE l.total_bill_usd
    END AS increase_usd
FROM lagged AS l
LEFT JOIN prev_rolled AS p
    ON p.seg = l.seg AND p.provider = l.provider AND p.resource_type = l.resource_type AND p.resource_id = l.resource_id
WHERE l.sampled_at >= window_start AND l.sampled_at < window_end
UNION ALL
SELECT d.day, d.provider, d.resource_id, d.resource_type, d.tier, d.last_sampled_at, NULL, d.last_total_usd, d.spend_usd
FROM billing_daily AS d, bounds AS x
WHERE d.day >= DATE '1970-01-01' + CAST(x.mid_from_d AS INTEGER)
  AND d.day < DATE '1970-01-01' + CAST(x.mid_to_d AS INTEGER);
