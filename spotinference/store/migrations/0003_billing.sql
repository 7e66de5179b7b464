-- Billing observability: one row per `spot sample` run (even with no resources, so an idle
-- fleet reads $0 while a missing run reads "unobservable"), and one row per resource per run.
CREATE TABLE sample_runs (
    run_id          VARCHAR PRIMARY KEY,
    provider        VARCHAR NOT NULL,
    started_at      TIMESTAMPTZ NOT NULL,
    finished_at     TIMESTAMPTZ NOT NULL,
    ok              BOOLEAN NOT NULL,
    error           VARCHAR,
    resource_count  INTEGER NOT NULL
);

CREATE TABLE billing_samples (
    run_id          VARCHAR NOT NULL,
    sampled_at      TIMESTAMPTZ NOT NULL,     -- our clock (UTC): the provider gives no "as of"
    provider        VARCHAR NOT NULL,
    resource_id     VARCHAR NOT NULL,
    resource_type   VARCHAR NOT NULL,         -- vm | volume | ...
    name            VARCHAR,
    tier            VARCHAR,
    usd_per_hour    DECIMAL(18, 6),           -- null once the resource is terminated
    total_bill_usd  DECIMAL(18, 6) NOT NULL,  -- the provider's cumulative bill
    active          BOOLEAN NOT NULL,
    raw             JSON NOT NULL
);
