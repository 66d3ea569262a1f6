-- Kueue pass-through: a run whose Job Kueue holds suspended (its Workload not admitted yet, or
-- evicted) is `admitting`. It has a Job, is unfinished, and counts wherever unfinished runs do.

ALTER TABLE runs DROP CONSTRAINT runs_status_check;
ALTER TABLE runs ADD CONSTRAINT runs_status_check CHECK (status IN
    ('queued','creating','admitting','pending','running','succeeded','failed','cancelled','lost'));

-- The partial indexes over unfinished runs, with `admitting` among them (the queries that use
-- them list the same statuses). runs_live is gone (20261203002000: no query needs it).
DROP INDEX IF EXISTS runs_live;
DROP INDEX runs_active_by_token;
CREATE INDEX runs_active_by_token ON runs (token_id)
    WHERE token_id IS NOT NULL
      AND status IN ('queued', 'creating', 'admitting', 'pending', 'running');

-- While `admitting`, the Workload's message changes without a status change (quota freed
-- elsewhere, the LocalQueue created, a preemption): each one is a `waiting` entry of the run's
-- history and so an event of `/v1/events`, like a pending run's reasons.
DROP TRIGGER runs_waiting ON runs;
CREATE TRIGGER runs_waiting AFTER UPDATE OF status_reason, status_message ON runs
    FOR EACH ROW WHEN (OLD.status = NEW.status AND NEW.status IN ('creating', 'admitting', 'pending')
        AND NEW.status_reason IS NOT NULL
        AND (OLD.status_reason IS DISTINCT FROM NEW.status_reason
             OR OLD.status_message IS DISTINCT FROM NEW.status_message))
    EXECUTE FUNCTION record_run_waiting();
