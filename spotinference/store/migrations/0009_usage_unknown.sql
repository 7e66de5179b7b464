-- Token counts can be unknown. A stream the client aborted before vLLM's first chunk, or a
-- non-streamed request whose client left (vLLM sends usage only with the whole answer), did
-- work on the GPU that no usage object ever described: such a row stores NULL, never 0, so that
-- "unknown" does not read as "free". sum() skips NULLs; reports count the unknown rows apart.
-- The DEFAULT goes too: the spool flush fills a missing JSON key with the column's default.
ALTER TABLE requests ALTER COLUMN prompt_tokens DROP NOT NULL;
ALTER TABLE requests ALTER COLUMN prompt_tokens DROP DEFAULT;
ALTER TABLE requests ALTER COLUMN completion_tokens DROP NOT NULL;
ALTER TABLE requests ALTER COLUMN completion_tokens DROP DEFAULT;
