-- Client API keys. Only a SHA-256 of each key is kept: keys are 256-bit random strings, so a
-- fast hash is enough (no dictionary to guess from) and the gateway can check one in microseconds.
CREATE TABLE api_keys (
    name        VARCHAR PRIMARY KEY,
    key_id      VARCHAR NOT NULL UNIQUE,  -- public handle logged with each request
    key_prefix  VARCHAR NOT NULL,         -- the first characters, to recognise a key in a list
    key_sha256  VARCHAR NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL,
    revoked_at  TIMESTAMPTZ
);
