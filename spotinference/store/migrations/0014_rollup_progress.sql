-- How far the daily roll-up (spotinference.costs.rollup.refresh) has checked: every settled UTC
-- day before checked_until has been rolled into billing_daily, with or without rows. Days without
-- samples add no rows, so max(billing_daily.day) alone cannot say a quiet stretch was already
-- walked, and every refresh walked it again (about 40 transactions for a ledger whose last sample
-- is months old; on a lake each one is a catalog round trip). One row at most.
CREATE TABLE billing_rollup_progress (
    checked_until  DATE NOT NULL   -- the first day not yet checked
);
