-- The ledger's rules, stated once (README "How spend is counted" says them in words).
--
-- A resource is (provider account, resource_type, resource_id). Its cumulative bill only grows:
--   * Samples are ordered by the run's SEQUENCE number (sample_runs.seq, assigned in the order
--     runs are recorded), never by a wall clock that NTP can step back.
--   * A sample's INCREASE is how far its total passes the resource's HIGH-WATER MARK (the largest
--     total of any earlier sample). A total at or below it counts nothing; below it is an ANOMALY
--     (downward jitter, a provider glitch), recorded and shown, never read as a counter reset that
--     adds the whole bill again. Measuring from the high-water mark means a dip followed by a
--     recovery never counts the same dollars twice.
--   * A missing or unparseable total is stored as NULL: a missing sample, never $0.
--   * A resource's first known total is a BASELINE (counts 0) when its account had no earlier
--     good run, or when the provider's create_time says it existed at the account's previous
--     good run (compared in the provider's clock where the provider gave one: its HTTP Date).
--     Otherwise it was created since, and its whole bill is spend.
--   * Only good runs count; items the provider marks exclude_billing never count.
--   * in_fleet: the resource is one spot created or adopted (fleet_resources). Reports put the
--     fleet in the headline and the rest of the account on its own line.

-- Runs: their order, and the two clocks.
ALTER TABLE sample_runs ADD COLUMN seq BIGINT;
ALTER TABLE sample_runs ADD COLUMN provider_clock_at TIMESTAMPTZ;  -- the provider's own time (HTTP Date), if given
ALTER TABLE sample_runs ADD COLUMN clock_behind_s DOUBLE;          -- our clock read this much behind the previous run's
ALTER TABLE sample_runs ADD COLUMN sampled_at TIMESTAMPTZ;         -- a good run's sample time (its rows'): a window's bound
UPDATE sample_runs SET seq = n.seq
FROM (SELECT run_id, row_number() OVER (ORDER BY started_at, run_id) AS seq FROM sample_runs) AS n
WHERE sample_runs.run_id = n.run_id;
UPDATE sample_runs SET sampled_at = coalesce(s.sampled_at, sample_runs.finished_at)
FROM (SELECT r.run_id, max(b.sampled_at) AS sampled_at
      FROM sample_runs AS r LEFT JOIN billing_samples AS b ON b.run_id = r.run_id
      WHERE r.ok GROUP BY r.run_id) AS s
WHERE sample_runs.run_id = s.run_id;

-- Samples: a total may be unknown; the provider's creation time; excluded items.
ALTER TABLE billing_samples ALTER COLUMN total_bill_usd DROP NOT NULL;
ALTER TABLE billing_samples ADD COLUMN created_at TIMESTAMPTZ;      -- the provider's create_time (its clock)
ALTER TABLE billing_samples ADD COLUMN excluded BOOLEAN DEFAULT false;  -- exclude_billing: never spend

-- The fleet: resources spot created (recorded when it created them) or adopted (a resource in a
-- configured account named by spot's convention for a configured tier, recorded when first sampled).
CREATE TABLE fleet_resources (
    provider        VARCHAR NOT NULL,
    resource_type   VARCHAR NOT NULL,        -- vm | volume
    resource_id     VARCHAR NOT NULL,
    name            VARCHAR,
    tier            VARCHAR,
    recorded_at     TIMESTAMPTZ NOT NULL,
    how             VARCHAR NOT NULL,        -- created | adopted
    PRIMARY KEY (provider, resource_type, resource_id)
);
INSERT INTO fleet_resources
SELECT provider, resource_type, resource_id, arg_max(name, sampled_at), arg_max(tier, sampled_at),
       min(sampled_at), 'adopted'
FROM billing_samples WHERE tier IS NOT NULL
GROUP BY provider, resource_type, resource_id;

-- What the ledger refused to count, recorded by the sampler with its run and the provider's item
-- (spotinference.billing.anomalies; shown by `spot cost` and `spot doctor`).
CREATE TABLE billing_anomalies (
    run_id             VARCHAR NOT NULL,
    sampled_at         TIMESTAMPTZ NOT NULL,
    provider           VARCHAR NOT NULL,
    resource_type      VARCHAR NOT NULL,
    resource_id        VARCHAR NOT NULL,
    name               VARCHAR,
    kind               VARCHAR NOT NULL,        -- decrease | missing_total
    total_bill_usd     DECIMAL(18, 6),          -- what the provider said (NULL: no readable total)
    previous_high_usd  DECIMAL(18, 6),          -- the high-water mark it fell below
    raw                JSON NOT NULL
);

-- The daily roll-up keeps each day's high-water mark, and is rebuilt under the new rules (the
-- reports refresh it; rows computed by the old counter-reset rule must not survive).
DROP TABLE billing_daily;
CREATE TABLE billing_daily (
    day              DATE NOT NULL,            -- UTC day of the samples
    provider         VARCHAR NOT NULL,
    resource_id      VARCHAR NOT NULL,
    resource_type    VARCHAR NOT NULL,
    tier             VARCHAR,
    spend_usd        DECIMAL(38, 6) NOT NULL,  -- sum of the day's increases
    samples          BIGINT NOT NULL,
    last_sampled_at  TIMESTAMPTZ NOT NULL,
    max_total_usd    DECIMAL(18, 6) NOT NULL   -- the day's high-water mark: later days measure from it
);

-- billing_increases(window_start, window_end): one row per counted sample whose sampled_at is in
-- [window_start, window_end), plus one row per resource and rolled-up whole day inside the window.
-- Columns: day, provider, resource_id, resource_type, tier, sampled_at, usd_per_hour,
-- total_bill_usd, increase_usd (USD), previous_high_usd (the high-water mark before this sample,
-- NULL for a first sample or a rolled day), run_id (NULL for a rolled day), in_fleet.
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
    SELECT run_id, seq,
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
    SELECT 1 AS seg, o.seq, o.prev_ok_at, b.run_id, b.sampled_at, b.provider, b.resource_id, b.resource_type,
           b.tier, b.usd_per_hour, b.total_bill_usd, b.created_at
    FROM billing_samples AS b JOIN ok_runs AS o ON o.run_id = b.run_id, bounds AS x
    WHERE b.sampled_at >= to_timestamp(x.head_scan_d * 86400)
      AND b.sampled_at < coalesce(to_timestamp(x.mid_from_d * 86400), window_end) + x.step_back
      AND NOT coalesce(b.excluded, false)
    UNION ALL
    SELECT 2 AS seg, o.seq, o.prev_ok_at, b.run_id, b.sampled_at, b.provider, b.resource_id, b.resource_type,
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
counted AS (
    SELECT
        DATE '1970-01-01' + CAST(epoch_us(j.sampled_at) // 86400000000 AS INTEGER) AS day,
        j.provider, j.resource_id, j.resource_type, j.tier, j.sampled_at, j.usd_per_hour, j.total_bill_usd,
        CASE
            WHEN j.previous_high_usd IS NULL THEN        -- the resource's first known total
                CASE WHEN j.first_seen_prev_ok_at IS NULL THEN 0                  -- account's first good run
                     WHEN j.created_at IS NOT NULL AND j.created_at <= j.first_seen_prev_ok_at THEN 0  -- existed before
                     ELSE j.total_bill_usd END                                     -- created since: whole bill
            WHEN j.total_bill_usd > j.previous_high_usd THEN j.total_bill_usd - j.previous_high_usd
            ELSE 0                                        -- unchanged, or a decrease (an anomaly)
        END AS increase_usd,
        j.previous_high_usd,
        j.run_id
    FROM judged AS j
    UNION ALL
    SELECT d.day, d.provider, d.resource_id, d.resource_type, d.tier, d.last_sampled_at, NULL, d.max_total_usd,
           d.spend_usd, NULL, NULL
    FROM billing_daily AS d, bounds AS x
    WHERE d.day >= DATE '1970-01-01' + CAST(x.mid_from_d AS INTEGER)
      AND d.day < DATE '1970-01-01' + CAST(x.mid_to_d AS INTEGER)
)
SELECT c.*, f.resource_id IS NOT NULL AS in_fleet
FROM counted AS c
LEFT JOIN fleet_resources AS f
    ON f.provider = c.provider AND f.resource_type = c.resource_type AND f.resource_id = c.resource_id;
