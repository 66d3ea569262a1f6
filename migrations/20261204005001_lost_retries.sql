-- Issue 19: a run whose Job vanished (`lost`) is resubmitted as a linked run (`rerun_of`) when
-- its template's `retry.onLost` allows. `retry_reason` marks such a run ("Retried: <why>") and
-- says why, for good (status reasons change as the run moves on); the chain's retries are
-- counted through it. A lost run is retried at most once: the unique index holds even if two
-- writers ever raced past the status guard.
ALTER TABLE runs ADD COLUMN retry_reason text;
CREATE UNIQUE INDEX runs_one_retry_per_loss ON runs (rerun_of) WHERE retry_reason IS NOT NULL;

-- `retry.onInfrastructureFailure: N` renders a `DisruptionTarget -> Ignore` rule, which
-- Kubernetes never counts; the service counts the run's disrupted pods here (the condition's
-- reason, e.g. EvictionByEvictionAPI) and fails the run at the N+1th.
ALTER TABLE run_pods ADD COLUMN disruption text;
