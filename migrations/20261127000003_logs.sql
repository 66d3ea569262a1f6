-- Pod logs archived in Postgres, so a run's output outlives its Job and pods.
--
-- The archive holds the kubelet's log stream as read with timestamps=true: each line starts with
-- its RFC 3339 time. Lines are numbered from 0 per pod; a chunk knows its first line's number, so
-- a reader can resume or switch sources at an exact line.

CREATE TABLE pod_logs (
    run_id         uuid        NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    pod_name       text        NOT NULL,
    -- capturing: being copied; complete: the whole log (up to the cap) is stored;
    -- incomplete: capture stopped early (detail says why); missing: nothing could be read.
    state          text        NOT NULL DEFAULT 'capturing'
                       CHECK (state IN ('capturing', 'complete', 'incomplete', 'missing')),
    detail         text,
    -- The process capturing it, and until when its claim holds.
    lease_owner    text,
    lease_until    timestamptz,
    lines          bigint      NOT NULL DEFAULT 0,  -- lines read from the cluster
    bytes          bigint      NOT NULL DEFAULT 0,  -- bytes read from the cluster
    head_bytes     bigint      NOT NULL DEFAULT 0,  -- bytes kept at the start
    tail_bytes     bigint      NOT NULL DEFAULT 0,  -- bytes kept at the end
    dropped_lines  bigint      NOT NULL DEFAULT 0,  -- lines cut out between head and tail
    dropped_bytes  bigint      NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    completed_at   timestamptz,
    PRIMARY KEY (run_id, pod_name)
);
CREATE INDEX pod_logs_completed ON pod_logs (completed_at);

CREATE TABLE log_chunks (
    run_id      uuid     NOT NULL,
    pod_name    text     NOT NULL,
    seq         integer  NOT NULL,
    -- head: within the first half of the per-pod cap; tail: a rolling window of the last half.
    part        text     NOT NULL CHECK (part IN ('head', 'tail')),
    first_line  bigint   NOT NULL,
    line_count  integer  NOT NULL,
    raw_len     integer  NOT NULL,
    -- 0: stored as is; 1: deflate (used when it saves at least a tenth).
    encoding    smallint NOT NULL DEFAULT 0,
    data        bytea    NOT NULL,
    PRIMARY KEY (run_id, pod_name, seq),
    FOREIGN KEY (run_id, pod_name) REFERENCES pod_logs (run_id, pod_name) ON DELETE CASCADE
);
