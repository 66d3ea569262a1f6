-- Runs on Kubernetes: launch bookkeeping, what the cluster reports, and one record per pod.

ALTER TABLE runs
    ADD COLUMN job_namespace      text,
    ADD COLUMN job_name           text,
    ADD COLUMN job_uid            text,
    -- Launch attempts: how often the launcher tried, the last error, and when it may try again.
    ADD COLUMN launch_attempts    integer     NOT NULL DEFAULT 0,
    ADD COLUMN launch_error       text,
    ADD COLUMN launch_not_before  timestamptz,
    -- A launcher's claim on a `creating` run; another launcher may take over once it lapses.
    ADD COLUMN lease_owner        text,
    ADD COLUMN lease_until        timestamptz,
    -- The Job's pod counts, as its status last reported them.
    ADD COLUMN pods_active        integer     NOT NULL DEFAULT 0,
    ADD COLUMN pods_ready         integer     NOT NULL DEFAULT 0,
    ADD COLUMN pods_succeeded     integer     NOT NULL DEFAULT 0,
    ADD COLUMN pods_failed        integer     NOT NULL DEFAULT 0,
    -- The Job of a cancelled run has been deleted (the canceller's bookkeeping).
    ADD COLUMN job_delete_requested boolean   NOT NULL DEFAULT false;

-- The launcher's queue: only launchable runs are in this index.
CREATE INDEX runs_launchable ON runs (id) WHERE status IN ('queued', 'creating');
-- Cancelled runs whose Job still has to be deleted.
CREATE INDEX runs_to_cancel ON runs (id)
    WHERE status = 'cancelled' AND job_name IS NOT NULL AND NOT job_delete_requested;
-- Unfinished runs, for reconciliation against the cluster.
CREATE INDEX runs_live ON runs (id) WHERE status IN ('queued', 'creating', 'pending', 'running');

CREATE TABLE run_pods (
    run_id            uuid        NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    name              text        NOT NULL,
    uid               text        NOT NULL,
    completion_index  integer,
    node_name         text,
    phase             text        NOT NULL,
    exit_code         integer,
    reason            text,
    message           text,
    restarts          integer     NOT NULL DEFAULT 0,
    created_at        timestamptz,
    started_at        timestamptz,
    finished_at       timestamptz,
    deleted           boolean     NOT NULL DEFAULT false,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, name)
);

-- Every run creation and status change, written by the database itself in the same transaction
-- as the change, so the history can never disagree with the runs table. Clients read it as a
-- run's history and (later) as a live event stream.
CREATE TABLE run_events (
    id         bigserial   PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    run_id     uuid        NOT NULL,
    task_name  text,
    kind       text        NOT NULL CHECK (kind IN ('created', 'status')),
    previous   text,
    status     text        NOT NULL,
    reason     text,
    message    text
);
CREATE INDEX run_events_run ON run_events (run_id, id);

CREATE FUNCTION record_run_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO run_events (run_id, task_name, kind, status)
        VALUES (NEW.id, NEW.task_name, 'created', NEW.status);
    ELSE
        INSERT INTO run_events (run_id, task_name, kind, previous, status, reason, message)
        VALUES (NEW.id, NEW.task_name, 'status', OLD.status, NEW.status,
                NEW.status_reason, NEW.status_message);
        IF NEW.status = 'cancelled' THEN
            -- Wakes the canceller on every replica at commit.
            PERFORM pg_notify('vfi_run_cancelled', NEW.id::text);
        END IF;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER runs_created AFTER INSERT ON runs
    FOR EACH ROW EXECUTE FUNCTION record_run_event();
CREATE TRIGGER runs_status_changed AFTER UPDATE OF status ON runs
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION record_run_event();
