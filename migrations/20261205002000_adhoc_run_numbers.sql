-- Issue 15: ad-hoc runs are numbered from a sequence instead of the `run_counters` row ''.
--
-- Every ad-hoc submission used to update that one row, whose lock is held until its
-- transaction commits: concurrent submitters queued behind each other for a client round trip
-- (the COMMIT) each, and for the scheduling delay of a busy service between the statement and
-- its COMMIT. pg_stat_statements on `scripts/bench throughput accept` showed the submission
-- statement at 2.46 ms mean (almost all of it waiting for the row) beside 0.017 ms for a
-- single-row INSERT on the same server. `nextval` never waits. Numbers stay unique
-- (runs_adhoc_number) and increase in submission order; a submission that fails after it was
-- numbered leaves its number unused (ad-hoc runs have no queue cap, so no refusal comes after
-- numbering). Task runs keep their counter row: the per-task queue cap counts under its lock.
CREATE SEQUENCE adhoc_run_numbers AS bigint MINVALUE 1;
SELECT setval('adhoc_run_numbers',
              coalesce((SELECT last_number FROM run_counters WHERE scope = ''), 0) + 1, false);
DELETE FROM run_counters WHERE scope = '';
-- A replica still running the former code fails its ad-hoc submissions (500) until it is
-- replaced, rather than numbering from a second counter.
ALTER TABLE run_counters ADD CONSTRAINT run_counters_no_adhoc CHECK (scope <> '');
