-- Why a pending run has not started yet (an image that cannot be pulled, no node that fits, a
-- pod refused by admission) is kept in the run's status_reason/status_message while it stays
-- pending, and each new reason is a `waiting` entry of the run's history (a reason can be seen
-- while the launcher is still recording the Job it created: `creating`).

ALTER TABLE run_events DROP CONSTRAINT run_events_kind_check;
ALTER TABLE run_events ADD CONSTRAINT run_events_kind_check
    CHECK (kind IN ('created', 'status', 'pruned', 'waiting'));

CREATE FUNCTION record_run_waiting() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    event_id bigint;
BEGIN
    INSERT INTO run_events (run_id, task_name, kind, previous, status, reason, message)
    VALUES (NEW.id, NEW.task_name, 'waiting', OLD.status, NEW.status,
            NEW.status_reason, NEW.status_message)
    RETURNING id INTO event_id;
    PERFORM pg_notify('vfi_run_events', event_id::text);
    RETURN NULL;
END $$;

CREATE TRIGGER runs_waiting AFTER UPDATE OF status_reason, status_message ON runs
    FOR EACH ROW WHEN (OLD.status = NEW.status AND NEW.status IN ('creating', 'pending')
        AND NEW.status_reason IS NOT NULL
        AND (OLD.status_reason IS DISTINCT FROM NEW.status_reason
             OR OLD.status_message IS DISTINCT FROM NEW.status_message))
    EXECUTE FUNCTION record_run_waiting();
