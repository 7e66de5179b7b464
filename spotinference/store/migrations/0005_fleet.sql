-- The fleet: the last known state of every node (the provider is the source of truth for the
-- VM, the engine's /health for serving; this is what we saw last), and every transition or
-- decision as an event with its reason.
CREATE TABLE nodes (
    name            VARCHAR PRIMARY KEY,      -- spot-<tier>-<n>, unique per provider account
    tier            VARCHAR NOT NULL,
    provider        VARCHAR NOT NULL,
    provider_id     VARCHAR,
    state           VARCHAR NOT NULL,         -- provisioning|bootstrapping|serving|hibernating|hibernated|waking|stopped|failed|terminated
    ip              VARCHAR,
    engine_url      VARCHAR,
    flavor          VARCHAR,
    gpu             VARCHAR,
    gpu_count       INTEGER,
    up_since        TIMESTAMPTZ,              -- when it last started serving
    updated_at      TIMESTAMPTZ NOT NULL
);

CREATE TABLE fleet_events (
    event_at        TIMESTAMPTZ NOT NULL,
    tier            VARCHAR NOT NULL,
    node            VARCHAR,                  -- null for a tier-level decision
    provider_id     VARCHAR,
    from_state      VARCHAR,
    to_state        VARCHAR,
    reason          VARCHAR NOT NULL,         -- why: "spot up", "idle 600 s", "reclaimed", ...
    detail          JSON
);
