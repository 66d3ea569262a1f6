-- Per-token limits on active runs: which token started each run, and an admin's override of the
-- installation's limit for a token.

-- The token that started the run (NULL: a schedule, a webhook, or authentication off). No
-- foreign key: a revoked token's runs stay in the history.
ALTER TABLE runs ADD COLUMN token_id uuid;

-- Counted by the per-token cap on runs that are not finished.
CREATE INDEX runs_active_by_token ON runs (token_id)
    WHERE token_id IS NOT NULL AND status IN ('queued', 'creating', 'pending', 'running');

-- Replaces MAX_ACTIVE_RUNS_PER_TOKEN for this token when set (0: no limit).
ALTER TABLE api_tokens ADD COLUMN max_active_runs integer CHECK (max_active_runs >= 0);
