-- API tokens, webhook triggers and webhook deliveries.

-- Bearer tokens. Only the SHA-256 of a token is stored: the token itself is shown once, when it
-- is created, and cannot be read back.
CREATE TABLE api_tokens (
    id          uuid        PRIMARY KEY,
    name        text        NOT NULL,
    token_hash  bytea       NOT NULL UNIQUE,
    scope       text        NOT NULL CHECK (scope IN ('read', 'run', 'admin')),
    -- The tasks the token is limited to; NULL means every task.
    tasks       text[],
    created_at  timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz
);

-- A task's webhook triggers. The secret is needed in clear to compute HMACs, so it is stored as
-- given; the API never returns it.
CREATE TABLE webhook_triggers (
    id          uuid        PRIMARY KEY,
    task_name   text        NOT NULL REFERENCES tasks (name) ON DELETE CASCADE,
    name        text        NOT NULL,
    provider    text        NOT NULL CHECK (provider IN ('github', 'gitlab', 'gitea')),
    secret      text        NOT NULL,
    events      text[]      NOT NULL,
    refs        text[]      NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (task_name, name)
);

-- Deliveries that started a run: a redelivery of the same delivery finds its run here instead of
-- starting a second one.
CREATE TABLE webhook_deliveries (
    trigger_id   uuid        NOT NULL REFERENCES webhook_triggers (id) ON DELETE CASCADE,
    delivery_id  text        NOT NULL,
    run_id       uuid        NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (trigger_id, delivery_id)
);

-- The per-task cap on queued runs counts these.
CREATE INDEX runs_queued_by_task ON runs (task_name) WHERE status = 'queued';
