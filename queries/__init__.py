"""Report SQL: one question per .sql file, run by spotinference.reports."""
