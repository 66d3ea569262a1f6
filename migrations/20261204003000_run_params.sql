-- Issue 18: the parameter values a run was started with, by name: {"value": <json>} for plain
-- parameters, {"sha256": "<hex>"} for secret ones (their values are never stored).
ALTER TABLE runs ADD COLUMN params jsonb NOT NULL DEFAULT '{}'::jsonb;
