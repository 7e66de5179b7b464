-- Question: which billing samples bound the window, account by account?
-- Parameters: $window_start, $window_end — TIMESTAMPTZ, the requested window [start, end).
-- Output per provider account that has ever run: provider, start_bound_at (the end of the
--   account's last good run before the window: the bill the window starts from; NULL when none),
--   end_bound_at (the end of its last good run before the window's end: what the bill has caught
--   up to), good_runs (good runs ending inside the window), failed_runs, last_error (of the
--   latest failed run inside the window).
-- `spot cost` divides the spend between the bounds by the tokens finished between the same
--   bounds; tokens after end_bound_at are "not billed yet", never $0. A run's samples are taken
--   before it ends, so bounding by run ends keeps each sample on one side.
SELECT
    provider,
    max(finished_at) FILTER (WHERE ok AND finished_at < $window_start) AS start_bound_at,
    max(finished_at) FILTER (WHERE ok AND finished_at < $window_end) AS end_bound_at,
    count(*) FILTER (WHERE ok AND finished_at >= $window_start AND finished_at < $window_end) AS good_runs,
    count(*) FILTER (WHERE NOT ok AND finished_at >= $window_start AND finished_at < $window_end) AS failed_runs,
    arg_max(error, seq) FILTER (WHERE NOT ok AND finished_at >= $window_start AND finished_at < $window_end) AS last_error
FROM sample_runs
GROUP BY provider
ORDER BY provider;
