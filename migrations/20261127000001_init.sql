-- Tasks, runs and idempotency keys: the service's record of intent.

CREATE TABLE tasks (
    name        text PRIMARY KEY,
    spec        jsonb       NOT NULL,
    -- Bumped on every replace that changes the spec, like a Kubernetes object's generation.
    generation  bigint      NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Run numbers per task (or '' for ad-hoc runs). Kept apart from tasks so that deleting and
-- re-creating a task never reuses a number, and so never a Job name.
CREATE TABLE run_counters (
    scope        text   PRIMARY KEY,
    last_number  bigint NOT NULL
);

CREATE TABLE runs (
    -- UUIDv7: time-ordered, so "newest first" is an index scan on the primary key.
    id              uuid        PRIMARY KEY,
    task_name       text,
    number          bigint      NOT NULL,
    status          text        NOT NULL CHECK (status IN
                        ('queued','creating','pending','running','succeeded','failed','cancelled','lost')),
    status_reason   text,
    status_message  text,
    trigger         text        NOT NULL CHECK (trigger IN ('api','rerun','schedule','webhook')),
    rerun_of        uuid        REFERENCES runs (id) ON DELETE SET NULL,
    template        jsonb       NOT NULL,
    labels          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    UNIQUE (task_name, number)
);
CREATE UNIQUE INDEX runs_adhoc_number ON runs (number) WHERE task_name IS NULL;
CREATE INDEX runs_task_id ON runs (task_name, id DESC);
CREATE INDEX runs_status_id ON runs (status, id DESC);
CREATE INDEX runs_labels ON runs USING gin (labels jsonb_path_ops);

-- Idempotency-Key records: the first response to a (scope, key) is replayed for the same body.
CREATE TABLE idempotency_keys (
    scope            text        NOT NULL,
    key              text        NOT NULL,
    request_hash     bytea       NOT NULL,
    response_status  smallint,
    response_body    jsonb,
    response_location text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
