-- Queue events (issue 16): when runs of a concurrency key leave its queue (admitted, or
-- cancelled while waiting), the waiting runs behind them move up. One row per key and task for
-- each such change, not one per waiting run, so 10,000 runs waiting on a key cost one event
-- per admission pass. Numbered from run_events' sequence, so that one Last-Event-ID orders
-- them with run and task events.
CREATE TABLE queue_events (
    id          bigint      PRIMARY KEY DEFAULT nextval(pg_get_serial_sequence('run_events', 'id')),
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    queue_key   text        NOT NULL,
    -- The task of the runs that left (NULL: ad-hoc runs); a key shared by tasks gets a row per
    -- task whose runs left.
    task_name   text,
    kind        text        NOT NULL CHECK (kind IN ('moved')),
    -- Why they left: `Admitted` or `Cancelled`.
    reason      text        NOT NULL,
    -- Runs of the key and task that left the queue in this change.
    left_queue  integer     NOT NULL CHECK (left_queue > 0),
    -- Runs of the key (all tasks) still waiting after it.
    waiting     bigint      NOT NULL
);
CREATE INDEX queue_events_task ON queue_events (task_name, id);
