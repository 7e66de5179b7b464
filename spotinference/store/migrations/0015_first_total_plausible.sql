-- A resource first seen without a (believable) create time no longer counts its whole bill by default.
--
-- Found by tests/test_money_fuzz.py: an account's first good answer came back empty (or left one
-- long-lived resource out), so the ledger's baseline for that account lacked the resource; at the
-- next run it appeared with no create_time, was read as created since, and its whole lifetime
-- bill ($0.10 against a true $0.000001 there; a year of a VM in production) became spend. Now
-- such a first total counts whole only when the resource's own rate could have billed it since
-- the account's good run before it appeared; otherwise it is a baseline and the sampler records
-- an anomaly (kind 'unexplained_first_total', spotinference.billing.anomalies) so the operator
-- sees what was not counted. A create time later than the provider's clock at that answer is not
-- believed (a local time without its offset, read as UTC, made an old resource look new).
--
-- billing_increases(window_start, window_end) is as in migration 0008, with one more column:
-- first_total, how a resource's first known total was read: 'new' (counted whole), 'baseline'
-- (counted 0: the account's first good run, or created before the run before it appeared),
-- 'unexplained' (counted 0: too large to be new, no create time: an anomaly); NULL for every
-- later sample and for rolled days.
CREATE OR REPLACE MACRO billing_increases(window_start, window_end) AS TABLE
WITH
rolled AS (
    SELECT coalesce(max(day) - DATE '1970-01-01' + 1, 0) AS until_d FROM billing_daily
),
bounds AS (
    SELECT *,
        least(ws_d, until_d) AS head_scan_d,                            -- raw lookback of the head
        CASE WHEN roll_from_d < roll_to_d THEN roll_from_d END AS mid_from_d,
        CASE WHEN roll_from_d < roll_to_d THEN roll_to_d END AS mid_to_d,
        -- A run recorded earlier in sequence can carry a later time when the clock stepped back
        -- since: where one did, each raw segment reads a day past its end for such runs.
        (SELECT CASE WHEN count(*) > 0 THEN INTERVAL 1 DAY ELSE INTERVAL 0 DAY END FROM sample_runs
         WHERE clock_behind_s IS NOT NULL AND started_at >= to_timestamp(least(ws_d, until_d) * 86400) - INTERVAL 1 DAY
        ) AS step_back
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
ok_runs AS (  -- the good runs the raw segments read, each with when its account's previous good run read the bill
    SELECT run_id, seq, coalesce(provider_clock_at, started_at) AS ok_at,
           lag(coalesce(provider_clock_at, started_at)) OVER (PARTITION BY provider ORDER BY seq) AS prev_ok_at
    FROM (
        SELECT r.* FROM sample_runs AS r, bounds AS x
        WHERE r.ok AND r.sampled_at >= to_timestamp(x.head_scan_d * 86400) - INTERVAL 1 DAY
        UNION ALL  -- and each account's good run before those, which the first of them follows
        SELECT * FROM sample_runs WHERE seq IN (
            SELECT max(r.seq) FROM sample_runs AS r, bounds AS x
            WHERE r.ok AND r.sampled_at < to_timestamp(x.head_scan_d * 86400) - INTERVAL 1 DAY
            GROUP BY r.provider)
    )
),
-- Raw segments: 1 = the window up to the first rolled day (or all of it), 2 = after the last.
raw AS (
    SELECT 1 AS seg, o.seq, o.ok_at, o.prev_ok_at, b.run_id, b.sampled_at, b.provider, b.resource_id, b.resource_type,
           b.tier, b.usd_per_hour, b.total_bill_usd, b.created_at
    FROM billing_samples AS b JOIN ok_runs AS o ON o.run_id = b.run_id, bounds AS x
    WHERE b.sampled_at >= to_timestamp(x.head_scan_d * 86400)
      AND b.sampled_at < coalesce(to_timestamp(x.mid_from_d * 86400), window_end) + x.step_back
      AND NOT coalesce(b.excluded, false)
    UNION ALL
    SELECT 2 AS seg, o.seq, o.ok_at, o.prev_ok_at, b.run_id, b.sampled_at, b.provider, b.resource_id, b.resource_type,
           b.tier, b.usd_per_hour, b.total_bill_usd, b.created_at
    FROM billing_samples AS b JOIN ok_runs AS o ON o.run_id = b.run_id, bounds AS x
    WHERE b.sampled_at >= to_timestamp(x.mid_to_d * 86400)
      AND b.sampled_at < window_end + x.step_back
      AND NOT coalesce(b.excluded, false)
),
prev_rolled AS (  -- each resource's high-water mark over the rolled days before each segment
    SELECT s.seg, d.provider, d.resource_type, d.resource_id, max(d.max_total_usd) AS high_usd
    FROM billing_daily AS d, bounds AS x,
         (SELECT 1 AS seg UNION ALL SELECT 2) AS s
    WHERE d.day < DATE '1970-01-01' + CAST(CASE s.seg WHEN 1 THEN x.head_scan_d ELSE x.mid_to_d END AS INTEGER)
    GROUP BY s.seg, d.provider, d.resource_type, d.resource_id
),
lagged AS (
    SELECT r.*,
        max(r.total_bill_usd) OVER w AS raw_high_usd,          -- max ignores the missing (NULL) totals
        first_value(r.prev_ok_at) OVER w_all AS first_seen_prev_ok_at  -- the good run before we first saw it
    FROM raw AS r
    WINDOW w AS (PARTITION BY r.seg, r.provider, r.resource_type, r.resource_id ORDER BY r.seq
                 ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING),
           w_all AS (PARTITION BY r.seg, r.provider, r.resource_type, r.resource_id ORDER BY r.seq
                     ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
),
judged AS (
    SELECT l.*, greatest(l.raw_high_usd, p.high_usd) AS previous_high_usd
    FROM lagged AS l
    LEFT JOIN prev_rolled AS p
        ON p.seg = l.seg AND p.provider = l.provider AND p.resource_type = l.resource_type AND p.resource_id = l.resource_id,
         bounds AS x
    WHERE l.sampled_at >= window_start AND l.sampled_at < window_end AND l.total_bill_usd IS NOT NULL
      AND (l.seg = 2 OR x.mid_from_d IS NULL OR l.sampled_at < to_timestamp(x.mid_from_d * 86400))
),
first_known AS (  -- how each resource's first known total is read
    SELECT j.*,
        CASE
            WHEN j.previous_high_usd IS NOT NULL THEN NULL
            WHEN j.first_seen_prev_ok_at IS NULL THEN 'baseline'                       -- account's first good run
            -- A create time later than the provider's own clock when it answered (plus 5 minutes)
            -- cannot be true (a local time sent without its offset reads hours ahead): not used.
            WHEN j.created_at IS NOT NULL AND j.created_at <= j.ok_at + INTERVAL 5 MINUTE THEN
                CASE WHEN j.created_at <= j.first_seen_prev_ok_at THEN 'baseline'      -- existed before
                     ELSE 'new' END                                                    -- created since: whole bill
            -- No usable create time: new only if it could have billed that much since the account's
            -- good run before it first appeared (its rate over that time, plus 5 minutes for the
            -- provider's per-minute rounding and refresh). Anything more is older than the runs
            -- that missed it (an empty or incomplete first answer): a baseline, and an anomaly.
            WHEN j.total_bill_usd * 3600000000
                 <= coalesce(j.usd_per_hour, 0)
                    * (epoch_us(j.ok_at) - epoch_us(j.first_seen_prev_ok_at) + 300000000) THEN 'new'
            WHEN j.total_bill_usd > 0 THEN 'unexplained'
            ELSE 'baseline'
        END AS first_total
    FROM judged AS j
),
counted AS (
    SELECT
        DATE '1970-01-01' + CAST(epoch_us(j.sampled_at) // 86400000000 AS INTEGER) AS day,
        j.provider, j.resource_id, j.resource_type, j.tier, j.sampled_at, j.usd_per_hour, j.total_bill_usd,
        CASE
            WHEN j.first_total = 'new' THEN j.total_bill_usd
            WHEN j.first_total IS NOT NULL THEN 0         -- a baseline: later increases count from it
            WHEN j.total_bill_usd > j.previous_high_usd THEN j.total_bill_usd - j.previous_high_usd
            ELSE 0                                        -- unchanged, or a decrease (an anomaly)
        END AS increase_usd,
        j.previous_high_usd,
        j.run_id,
        j.first_total
    FROM first_known AS j
    UNION ALL
    SELECT d.day, d.provider, d.resource_id, d.resource_type, d.tier, d.last_sampled_at, NULL, d.max_total_usd,
           d.spend_usd, NULL, NULL, NULL
    FROM billing_daily AS d, bounds AS x
    WHERE d.day >= DATE '1970-01-01' + CAST(x.mid_from_d AS INTEGER)
      AND d.day < DATE '1970-01-01' + CAST(x.mid_to_d AS INTEGER)
)
SELECT c.*, f.resource_id IS NOT NULL AS in_fleet
FROM counted AS c
LEFT JOIN fleet_resources AS f
    ON f.provider = c.provider AND f.resource_type = c.resource_type AND f.resource_id = c.resource_id;

-- Days rolled up under the old rule may carry such a lifetime bill: roll them again from the raw
-- samples (kept), as 0008 did; the next report or `spot sample` refreshes the roll-up.
DELETE FROM billing_daily;
DELETE FROM billing_rollup_progress;
