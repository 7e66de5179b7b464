-- The budget gate's openings and closings, one row per change (not per request), written by
-- whichever gateway worker sees the change first (spotinference.billing.budget: a worker that
-- finds the same state already last in this table writes nothing).
CREATE TABLE gate_events (
    event_at        TIMESTAMPTZ NOT NULL,
    open            BOOLEAN NOT NULL,
    reason          VARCHAR NOT NULL,         -- ok|no_budget|gate_off|billing_unobservable|budget_exhausted
    clock_fault     BOOLEAN NOT NULL,         -- closed because a billing sample is dated in the future
    message         VARCHAR NOT NULL,         -- the gate's own sentence (what the 503/429 says)
    detail          JSON                      -- spend_today_usd, budget_usd, sample_age_s, ...
);
