-- Results back where people look (issue 17): commit statuses on the Git host and notifications,
-- through a durable outbox written in the same statement as the status change it reports.

-- A trigger's report settings (provider, context, targetUrl, apiBaseUrl, a GitHub App's ids;
-- defaults resolved when saved) and its token, or its GitHub App's private key. Needed in clear
-- to call the host, so stored as given; the API never returns it.
ALTER TABLE webhook_triggers ADD COLUMN report jsonb;
ALTER TABLE webhook_triggers ADD COLUMN report_token text;

-- Where a webhook run came from (the commit it builds), and where its status is reported
-- (report_* NULL: not reported). Settings are copied from the trigger when the run is recorded,
-- so a later edit of the trigger does not move a run's reports to another commit or context;
-- the token is read from the trigger at each delivery (a rotated token is used at once).
CREATE TABLE run_sources (
    run_id            uuid        PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
    trigger_id        uuid        REFERENCES webhook_triggers (id) ON DELETE SET NULL,
    task_name         text,
    repository        text        NOT NULL,
    sha               text        NOT NULL,
    git_ref           text        NOT NULL,
    report_provider   text        CHECK (report_provider IN ('github', 'gitlab', 'gitea')),
    report_api_base   text,
    report_context    text,
    report_target_url text,
    -- A GitHub App's ids (check runs instead of commit statuses), and the run's check run once
    -- the first report created it (later reports update it).
    report_app_id     bigint,
    report_installation_id bigint,
    check_run_id      bigint,
    -- The last final refusal of the host (401, 403, 404, 422...), shown as `report.lastError`.
    report_error      text,
    report_error_at   timestamptz
);
CREATE INDEX run_sources_task_ref ON run_sources (task_name, git_ref);

-- One row per ordering key: a commit status (provider, API, repository, commit, context) or one
-- notification. `pending_id` is the newest message not yet delivered (older ones are superseded
-- when a newer one is written: coalescing), so a reporter always sends the newest state and
-- never an older one after it. Reporters claim keys under a lease, like the launcher claims runs.
CREATE TABLE outbox_keys (
    key           text        PRIMARY KEY,
    pending_id    bigint,
    delivered_id  bigint,
    -- Transient failures in a row (retry backoff).
    failures      integer     NOT NULL DEFAULT 0,
    not_before    timestamptz NOT NULL DEFAULT now(),
    lease_owner   text,
    lease_until   timestamptz
);
CREATE INDEX outbox_keys_due ON outbox_keys (not_before) WHERE pending_id IS NOT NULL;

CREATE TABLE outbox (
    id          bigserial   PRIMARY KEY,
    key         text        NOT NULL,
    run_id      uuid        REFERENCES runs (id) ON DELETE CASCADE,
    kind        text        NOT NULL CHECK (kind IN ('status', 'notification')),
    -- The run's status (kind status) or the notification's event.
    status      text        NOT NULL,
    reason      text,
    message     text,
    -- A notification's receiver: {url, format, task}.
    target      jsonb,
    -- A notification's signing secret (write-only, like webhook secrets).
    secret      text,
    state       text        NOT NULL DEFAULT 'pending'
                CHECK (state IN ('pending', 'delivered', 'superseded', 'failed')),
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz
);
CREATE INDEX outbox_run ON outbox (run_id, id);
CREATE INDEX outbox_pending ON outbox (created_at) WHERE state = 'pending';

-- Every attempt to deliver an outbox message, with the answer (GET /v1/runs/{id}/deliveries).
CREATE TABLE outbox_attempts (
    id          bigserial   PRIMARY KEY,
    outbox_id   bigint      NOT NULL REFERENCES outbox (id) ON DELETE CASCADE,
    at          timestamptz NOT NULL DEFAULT now(),
    http_status integer,
    answer      text,
    result      text        NOT NULL CHECK (result IN ('delivered', 'retry', 'failed')),
    duration_ms integer     NOT NULL
);
CREATE INDEX outbox_attempts_message ON outbox_attempts (outbox_id, id);

-- Writes one message for `p_key` and makes it the key's newest: an older undelivered one is
-- superseded. Wakes every replica's reporter at commit.
CREATE FUNCTION outbox_put(p_key text, p_run uuid, p_kind text, p_status text, p_reason text,
                           p_message text, p_target jsonb, p_secret text)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    new_id bigint;
    old_id bigint;
BEGIN
    INSERT INTO outbox (key, run_id, kind, status, reason, message, target, secret)
    VALUES (p_key, p_run, p_kind, p_status, p_reason, p_message, p_target, p_secret)
    RETURNING id INTO new_id;
    INSERT INTO outbox_keys (key) VALUES (p_key) ON CONFLICT (key) DO NOTHING;
    -- Locks the key: writers of one key queue here, so ids follow commit order per key.
    SELECT pending_id INTO old_id FROM outbox_keys WHERE key = p_key FOR UPDATE;
    UPDATE outbox_keys SET pending_id = new_id WHERE key = p_key;
    IF old_id IS NOT NULL THEN
        UPDATE outbox SET state = 'superseded', finished_at = now()
        WHERE id = old_id AND state = 'pending';
    END IF;
    PERFORM pg_notify('vfi_outbox', '');
END $$;

CREATE FUNCTION outbox_report_key(s run_sources) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT 'status:' || md5(concat_ws(E'\n', s.report_provider, s.report_api_base, s.repository,
                                      s.sha, s.report_context))
$$;

-- A reported run's first state, written with its source (in the run's own transaction).
CREATE FUNCTION outbox_on_source() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r runs;
BEGIN
    IF NEW.report_provider IS NOT NULL THEN
        SELECT * INTO r FROM runs WHERE id = NEW.run_id;
        PERFORM outbox_put(outbox_report_key(NEW), r.id, 'status', r.status, r.status_reason,
                           r.status_message, NULL, NULL);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER run_sources_reported AFTER INSERT ON run_sources
    FOR EACH ROW EXECUTE FUNCTION outbox_on_source();

-- Every status change (or waiting reason) of a reported run writes its report; a final status of
-- a task with `notify` entries writes their notifications. In the status change's own statement, so the
-- outbox and the run never disagree.
CREATE FUNCTION outbox_on_status() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    src      run_sources;
    notify   jsonb;
    entry    jsonb;
    event    text;
    sent     text;
    previous text;
    i        integer;
BEGIN
    SELECT * INTO src FROM run_sources WHERE run_id = NEW.id;
    IF FOUND AND src.report_provider IS NOT NULL THEN
        PERFORM outbox_put(outbox_report_key(src), NEW.id, 'status', NEW.status,
                           NEW.status_reason, NEW.status_message, NULL, NULL);
    END IF;
    IF NEW.task_name IS NULL
       OR NEW.status NOT IN ('succeeded', 'failed', 'cancelled', 'lost') THEN
        RETURN NULL;
    END IF;
    SELECT t.spec -> 'notify' INTO notify FROM tasks t WHERE t.name = NEW.task_name;
    IF notify IS NULL OR jsonb_typeof(notify) <> 'array' OR jsonb_array_length(notify) = 0 THEN
        RETURN NULL;
    END IF;
    event := NEW.status;
    IF NEW.status = 'succeeded' THEN
        -- `recovered`: the first success after failures of the same task (for a webhook run,
        -- of the same ref); cancelled runs say nothing either way.
        SELECT r.status INTO previous
        FROM runs r LEFT JOIN run_sources s ON s.run_id = r.id
        WHERE r.task_name = NEW.task_name AND r.id <> NEW.id
          AND r.status IN ('succeeded', 'failed', 'lost')
          AND ((src.run_id IS NULL AND s.run_id IS NULL) OR s.git_ref = src.git_ref)
        ORDER BY r.finished_at DESC, r.id DESC
        LIMIT 1;
        IF previous IN ('failed', 'lost') THEN
            event := 'recovered';
        END IF;
    END IF;
    FOR i IN 0 .. jsonb_array_length(notify) - 1 LOOP
        entry := notify -> i;
        sent := CASE
            WHEN (entry -> 'on') ? event THEN event
            -- A recovery is also a success.
            WHEN event = 'recovered' AND (entry -> 'on') ? 'succeeded' THEN 'succeeded'
        END;
        IF sent IS NOT NULL THEN
            PERFORM outbox_put('notify:' || NEW.id || ':' || i, NEW.id, 'notification', sent,
                               NEW.status_reason, NEW.status_message,
                               jsonb_build_object('url', entry ->> 'url',
                                                  'format', coalesce(entry ->> 'format', 'json'),
                                                  'task', NEW.task_name),
                               entry ->> 'secret');
        END IF;
    END LOOP;
    RETURN NULL;
END $$;

-- Also a new waiting reason of a run that has not started (queued, creating, pending): the
-- host's description says why it waits.
CREATE TRIGGER runs_outbox AFTER UPDATE OF status, status_reason, status_message ON runs
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status
        OR (NEW.status IN ('queued', 'creating', 'pending')
            AND (OLD.status_reason IS DISTINCT FROM NEW.status_reason
                 OR OLD.status_message IS DISTINCT FROM NEW.status_message)))
    EXECUTE FUNCTION outbox_on_status();
