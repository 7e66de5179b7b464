-- Question: how many rows does each of spot's tables hold? (`spot db status`)
-- Parameters: none.
-- Units: rows, as DuckDB's catalog estimates them (exact for append-only tables).
SELECT
    table_name     AS table_name,
    estimated_size AS row_count
FROM duckdb_tables()
WHERE schema_name = 'main' AND database_name = current_database()  -- a lake's, not its catalog's
ORDER BY table_name;
