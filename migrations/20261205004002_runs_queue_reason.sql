-- The waiting reason last announced for a queued run (issue 16: `/v1/events` carries queue
-- changes): a `run.queue` event is written when a waiting run's reason changes (e.g. its key's
-- slot frees but the installation or namespace limit now holds it), once per change.
ALTER TABLE runs ADD COLUMN queue_reason text;
