-- Schedules (CronJob semantics) and history retention.

-- The scheduled time a run was started for; NULL for runs not started by the schedule.
ALTER TABLE runs ADD COLUMN scheduled_time timestamptz;

-- One record per (task, scheduled time) the scheduler or a backfill dealt with: either a run
-- was started for it, or it was skipped with the reason. The primary key is what makes firing
-- exactly-once: the run insert and this record share a transaction, so a second replica (or a
-- restarted one) that reaches the same time finds the key taken and starts nothing.
CREATE TABLE schedule_fires (
    task_name       text        NOT NULL REFERENCES tasks (name) ON DELETE CASCADE,
    scheduled_time  timestamptz NOT NULL,
    outcome         text        NOT NULL CHECK (outcome IN ('started', 'skipped')),
    -- Why it was skipped (Forbid, DeadlinePassed, Missed, CatchUpLimit, Suspended,
    -- MissedMany); NULL when started.
    reason          text,
    message         text,
    -- The run started for it (kept NULL once that run is pruned).
    run_id          uuid        REFERENCES runs (id) ON DELETE SET NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_name, scheduled_time)
);
CREATE INDEX schedule_fires_run ON schedule_fires (run_id) WHERE run_id IS NOT NULL;
CREATE INDEX schedule_fires_recorded ON schedule_fires (recorded_at);

-- How far the scheduler has looked at each scheduled task: every scheduled time up to
-- `considered_until` has a record above (or was deliberately not listed, see MissedMany).
-- `schedule` and `time_zone` are what the cursor was computed for; a changed schedule starts
-- afresh from the moment the scheduler sees the change instead of catching up on the old one.
CREATE TABLE schedule_cursors (
    task_name         text        PRIMARY KEY REFERENCES tasks (name) ON DELETE CASCADE,
    schedule          text        NOT NULL,
    time_zone         text        NOT NULL,
    considered_until  timestamptz NOT NULL
);

-- Wakes schedulers on every replica when a task is created, changed or deleted.
CREATE FUNCTION notify_task_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('vfi_task_changed', coalesce(NEW.name, OLD.name));
    RETURN NULL;
END $$;

CREATE TRIGGER tasks_changed AFTER INSERT OR UPDATE OR DELETE ON tasks
    FOR EACH ROW EXECUTE FUNCTION notify_task_changed();

-- Pruning: finished runs of a task by outcome, oldest first (history limits), ...
CREATE INDEX runs_task_status_id ON runs (task_name, status, id);
-- ... finished runs by age (global maximum age) ...
CREATE INDEX runs_finished_at ON runs (finished_at) WHERE finished_at IS NOT NULL;
-- ... and the reference checks a delete makes: without these every deleted row would scan.
CREATE INDEX runs_rerun_of ON runs (rerun_of) WHERE rerun_of IS NOT NULL;
