-- Which route each request came in on (issue 17): /v1/chat/completions, /v1/responses,
-- /v1/messages, /v1/embeddings, ... (ids in a path are logged as {id}). Rows written before
-- this column existed came from /v1/chat/completions or /v1/completions, but nothing in them
-- says which (no column, and `extra` was never written), so they keep NULL: reports show them
-- as "(not recorded)" rather than a guess.
ALTER TABLE requests ADD COLUMN endpoint VARCHAR;
