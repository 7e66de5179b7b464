-- The token log: one row per request the gateway handled, whatever its outcome.
-- Cost per million tokens divides billed spend by these token counts.
CREATE TABLE requests (
    request_id         VARCHAR NOT NULL,
    gateway_id         VARCHAR NOT NULL,      -- which gateway process wrote the row
    key_id             VARCHAR,               -- the client key's id, never the key itself
    model              VARCHAR NOT NULL,
    tier               VARCHAR,
    node               VARCHAR,
    started_at         TIMESTAMPTZ NOT NULL,
    finished_at        TIMESTAMPTZ NOT NULL,
    ttft_ms            DOUBLE,                -- time to first token, streamed requests only
    wake_wait_ms       DOUBLE,                -- time held while the tier woke, if it slept
    prompt_tokens      BIGINT NOT NULL DEFAULT 0,
    completion_tokens  BIGINT NOT NULL DEFAULT 0,
    http_status        INTEGER NOT NULL,
    finish_reason      VARCHAR,
    client_aborted     BOOLEAN NOT NULL DEFAULT false,
    streamed           BOOLEAN NOT NULL DEFAULT false,
    error              VARCHAR,
    extra              JSON                   -- anything else worth keeping, without a migration
);
