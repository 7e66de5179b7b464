-- Question: which sampler runs were there around a stretch of the PROVIDER's timeline, and which failed?
-- Parameters: $window_start, $window_end — TIMESTAMPTZ in the provider's clock.
-- Output one row per run of each account whose sequence lies between the account's first and last
--   good run placed in [start, end) by provider_clock_at, in run order: provider, seq, run_id, ok,
--   provider_clock_at (NULL when the provider gave no clock, e.g. a failed run), started_at (ours),
--   error. Reconciliation reads a failed run, or a long stretch between good runs, as a gap.
WITH placed AS (
    SELECT provider, min(seq) AS seq0, max(seq) AS seq1
    FROM sample_runs
    WHERE ok AND provider_clock_at >= $window_start AND provider_clock_at < $window_end
    GROUP BY provider
)
SELECT r.provider, r.seq, r.run_id, r.ok, r.provider_clock_at, r.started_at, r.error
FROM sample_runs AS r JOIN placed AS p ON p.provider = r.provider
WHERE r.seq BETWEEN p.seq0 AND p.seq1
ORDER BY r.provider, r.seq;
