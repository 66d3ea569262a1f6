-- `queue.moved` for runs without a concurrency key (issue 16): under installation limits
-- (MAX_ACTIVE_RUNS, MAX_ACTIVE_RUNS_PER_NAMESPACE) they wait too, in the installation's queue,
-- and move up when runs ahead of them are admitted. Their events have no key (NULL).
ALTER TABLE queue_events ALTER COLUMN queue_key DROP NOT NULL;
