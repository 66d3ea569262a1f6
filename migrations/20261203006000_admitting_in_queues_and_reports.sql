-- The Kueue pass-through's `admitting` status (20261203004000) and the queues (20261203003000)
-- and the reporting outbox (20261203005000) were built side by side. A run held by Kueue has a
-- Job that has not finished, so it holds its concurrency key's slot like `creating`, `pending`
-- and `running`; and the host hears Kueue's message while it waits, as it hears any other
-- waiting reason of a run that has not started.

DROP INDEX runs_active_by_key;
CREATE INDEX runs_active_by_key ON runs (queue_key)
    WHERE queue_key IS NOT NULL AND status IN ('creating', 'admitting', 'pending', 'running');

DROP TRIGGER runs_slot_freed ON runs;
CREATE TRIGGER runs_slot_freed AFTER UPDATE OF status, job_delete_requested ON runs
    FOR EACH ROW WHEN (NEW.queue_key IS NOT NULL
        AND (OLD.status IN ('creating', 'admitting', 'pending', 'running')
             OR (OLD.status = 'cancelled' AND OLD.job_name IS NOT NULL
                 AND NOT OLD.job_delete_requested))
        AND NOT (NEW.status IN ('creating', 'admitting', 'pending', 'running')
             OR (NEW.status = 'cancelled' AND NEW.job_name IS NOT NULL
                 AND NOT NEW.job_delete_requested)))
    EXECUTE FUNCTION wake_launchers();

DROP TRIGGER runs_outbox ON runs;
CREATE TRIGGER runs_outbox AFTER UPDATE OF status, status_reason, status_message ON runs
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status
        OR (NEW.status IN ('queued', 'creating', 'admitting', 'pending')
            AND (OLD.status_reason IS DISTINCT FROM NEW.status_reason
                 OR OLD.status_message IS DISTINCT FROM NEW.status_message)))
    EXECUTE FUNCTION outbox_on_status();
