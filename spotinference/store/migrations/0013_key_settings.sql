-- Per-key settings (issue 23): what a key may spend, how fast it may ask, which models it may
-- see and until when it works. NULL: no limit. models NULL: every model; expires_at NULL: never.
ALTER TABLE api_keys ADD COLUMN daily_usd DECIMAL(18, 6);
ALTER TABLE api_keys ADD COLUMN monthly_usd DECIMAL(18, 6);
ALTER TABLE api_keys ADD COLUMN rpm INTEGER;
ALTER TABLE api_keys ADD COLUMN tpm BIGINT;
ALTER TABLE api_keys ADD COLUMN max_concurrent INTEGER;
ALTER TABLE api_keys ADD COLUMN models VARCHAR[];
ALTER TABLE api_keys ADD COLUMN expires_at TIMESTAMPTZ;
