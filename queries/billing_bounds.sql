-- Question: which billing samples bound the window, account by account?
-- Parameters: $window_start, $window_end — TIMESTAMPTZ, the requested window [start, end).
-- Output per provider account that has ever run: provider, start_bound_at (the account's last
--   good sample before the window: the bill the window starts from; NULL when none),
--   end_bound_at (its last good sample before the window's end: what the bill has caught up to),
--   good_runs (good samples inside the window), failed_runs, last_error (of the latest failed run
--   inside the window, by when it started).
-- `spot cost` divides the spend between the bounds by the tokens finished between the same
--   bounds; tokens after end_bound_at are "not billed yet", never $0. A sample's time is its
--   run's sampled_at, the time of all its billing_samples rows.
SELECT
    provider,
    max(sampled_at) FILTER (WHERE ok AND sampled_at < $window_start) AS start_bound_at,
    max(sampled_at) FILTER (WHERE ok AND sampled_at < $window_end) AS end_bound_at,
    count(*) FILTER (WHERE ok AND sampled_at >= $window_start AND sampled_at < $window_end) AS good_runs,
    count(*) FILTER (WHERE NOT ok AND started_at >= $window_start AND started_at < $window_end) AS failed_runs,
    arg_max(error, seq) FILTER (WHERE NOT ok AND started_at >= $window_start AND started_at < $window_end) AS last_error
FROM sample_runs
GROUP BY provider
ORDER BY provider;
