-- Queues (issue 16): a run's priority, its concurrency key and the limit it was submitted
-- under, when the launcher admitted it, and the newer run that superseded it.

ALTER TABLE runs
    -- Higher runs first; equal priorities in submission order (the launcher adds aging).
    ADD COLUMN priority      integer NOT NULL DEFAULT 0,
    -- The rendered concurrency key (NULL: the run's task has no `concurrency`).
    ADD COLUMN queue_key     text,
    -- The task's concurrency limit when the run was submitted.
    ADD COLUMN queue_limit   integer CHECK (queue_limit >= 1),
    -- When the launcher's admission let the run through (its first claim).
    ADD COLUMN admitted_at   timestamptz,
    -- The newer run of its key that cancelled it (policies CancelInProgress, CancelPending).
    ADD COLUMN superseded_by uuid;

-- Waiting runs of a key, in the admission's order (before aging).
CREATE INDEX runs_queued_by_key ON runs (queue_key, priority DESC, id)
    WHERE status = 'queued' AND queue_key IS NOT NULL;
-- Runs of a key holding a slot (a Job not finished yet).
CREATE INDEX runs_active_by_key ON runs (queue_key)
    WHERE queue_key IS NOT NULL AND status IN ('creating', 'pending', 'running');

-- `queue` events: a run that must wait says for what when it is queued.
ALTER TABLE run_events DROP CONSTRAINT run_events_kind_check;
ALTER TABLE run_events ADD CONSTRAINT run_events_kind_check
    CHECK (kind IN ('created', 'status', 'pruned', 'waiting', 'queue'));

-- A run of a key that gives its slot back (its Job finished, or a cancelled run's Job was
-- deleted) wakes the launchers of every replica at commit, so the next run of the key is
-- admitted at once rather than at the next poll.
CREATE FUNCTION wake_launchers() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('vfi_run_queued', '');
    RETURN NULL;
END $$;

CREATE TRIGGER runs_slot_freed AFTER UPDATE OF status, job_delete_requested ON runs
    FOR EACH ROW WHEN (NEW.queue_key IS NOT NULL
        AND (OLD.status IN ('creating', 'pending', 'running')
             OR (OLD.status = 'cancelled' AND OLD.job_name IS NOT NULL
                 AND NOT OLD.job_delete_requested))
        AND NOT (NEW.status IN ('creating', 'pending', 'running')
             OR (NEW.status = 'cancelled' AND NEW.job_name IS NOT NULL
                 AND NOT NEW.job_delete_requested)))
    EXECUTE FUNCTION wake_launchers();
