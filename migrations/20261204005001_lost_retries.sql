-- Issue 19: a run whose Job vanished (`lost`) is resubmitted as a linked run (`rerun_of`) when
-- its template's `retry.onLost` allows. `retry_reason` marks such a run ("Retried: <why>") and
-- says why, for good (status reasons change as the run moves on); the chain's retries are
-- counted through it. A lost run is retried at most once: the unique index holds even if two
-- writers ever raced past the status guard.
ALTER TABLE runs ADD COLUMN retry_reason text;
CREATE UNIQUE INDEX runs_one_retry_per_loss ON runs (rerun_of) WHERE retry_reason IS NOT NULL;
