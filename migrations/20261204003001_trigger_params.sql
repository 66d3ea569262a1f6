-- Issue 18: a webhook trigger's mapping of Git event facts to task parameters
-- ({"ref": "{{ref}}", ...}).
ALTER TABLE webhook_triggers ADD COLUMN params jsonb NOT NULL DEFAULT '{}'::jsonb;
