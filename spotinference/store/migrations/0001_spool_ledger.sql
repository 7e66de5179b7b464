-- The spool ledger: which spool segment files have been copied into the database.
-- A segment's rows and its ledger row are written in one transaction, so a crash between that
-- commit and the file's deletion never copies the segment twice.
CREATE TABLE spool_ingested (
    segment      VARCHAR PRIMARY KEY,   -- file name, unique per writer and sequence number
    table_name   VARCHAR NOT NULL,
    row_count    BIGINT NOT NULL,
    ingested_at  TIMESTAMPTZ NOT NULL
);
