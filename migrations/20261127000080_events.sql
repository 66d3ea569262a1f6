-- Live events: every run_events row is announced with NOTIFY at commit, task definitions get
-- their own events in the same id sequence (so one Last-Event-ID orders both), and deleting a
-- run (pruning) leaves a `pruned` event behind.

ALTER TABLE run_events DROP CONSTRAINT run_events_kind_check;
ALTER TABLE run_events ADD CONSTRAINT run_events_kind_check
    CHECK (kind IN ('created', 'status', 'pruned'));

-- Task changes, numbered from run_events' sequence: an SSE client resumes both with one id.
CREATE TABLE task_events (
    id          bigint      PRIMARY KEY DEFAULT nextval(pg_get_serial_sequence('run_events', 'id')),
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    task_name   text        NOT NULL,
    kind        text        NOT NULL CHECK (kind IN ('created', 'updated', 'deleted')),
    generation  bigint      NOT NULL
);
CREATE INDEX task_events_task ON task_events (task_name, id);

CREATE OR REPLACE FUNCTION record_run_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    event_id bigint;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO run_events (run_id, task_name, kind, status)
        VALUES (NEW.id, NEW.task_name, 'created', NEW.status)
        RETURNING id INTO event_id;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO run_events (run_id, task_name, kind, status)
        VALUES (OLD.id, OLD.task_name, 'pruned', OLD.status)
        RETURNING id INTO event_id;
    ELSE
        INSERT INTO run_events (run_id, task_name, kind, previous, status, reason, message)
        VALUES (NEW.id, NEW.task_name, 'status', OLD.status, NEW.status,
                NEW.status_reason, NEW.status_message)
        RETURNING id INTO event_id;
        IF NEW.status = 'cancelled' THEN
            -- Wakes the canceller on every replica at commit.
            PERFORM pg_notify('vfi_run_cancelled', NEW.id::text);
        END IF;
    END IF;
    -- Wakes every replica's event stream at commit. Only a wake-up: readers fetch the rows
    -- after the last id they sent, so coalesced or lost notifications lose no event.
    PERFORM pg_notify('vfi_run_events', event_id::text);
    RETURN NULL;
END $$;

CREATE TRIGGER runs_deleted AFTER DELETE ON runs
    FOR EACH ROW EXECUTE FUNCTION record_run_event();

CREATE FUNCTION record_task_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    event_id bigint;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO task_events (task_name, kind, generation)
        VALUES (NEW.name, 'created', NEW.generation) RETURNING id INTO event_id;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO task_events (task_name, kind, generation)
        VALUES (OLD.name, 'deleted', OLD.generation) RETURNING id INTO event_id;
    ELSE
        INSERT INTO task_events (task_name, kind, generation)
        VALUES (NEW.name, 'updated', NEW.generation) RETURNING id INTO event_id;
    END IF;
    PERFORM pg_notify('vfi_run_events', event_id::text);
    RETURN NULL;
END $$;

CREATE TRIGGER tasks_created AFTER INSERT ON tasks
    FOR EACH ROW EXECUTE FUNCTION record_task_event();
CREATE TRIGGER tasks_updated AFTER UPDATE ON tasks
    FOR EACH ROW WHEN (OLD.spec IS DISTINCT FROM NEW.spec) EXECUTE FUNCTION record_task_event();
CREATE TRIGGER tasks_deleted AFTER DELETE ON tasks
    FOR EACH ROW EXECUTE FUNCTION record_task_event();
