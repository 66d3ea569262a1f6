-- Retention for outbox_keys (issue 17 leftover): a key's row outlived the messages it ordered
-- (they go with their runs when the pruner deletes them), so the table only grew. The pruner
-- now deletes keys with nothing due, no lease and no message left (store::outbox::prune_keys;
-- the index on outbox (key) it uses comes in the next migration, built concurrently).

-- outbox_put, race-free against that cleanup: the key's row was created with
-- INSERT ... ON CONFLICT DO NOTHING (which takes no lock on an existing row) and then locked
-- with a separate SELECT ... FOR UPDATE, so a cleanup committing in between left the new
-- message without a key row, never to be sent. One INSERT ... ON CONFLICT DO UPDATE now
-- creates or locks the row and points it at the new message in the same statement (a row
-- deleted concurrently makes it insert a fresh one). The key's older undelivered message (the
-- one its pending_id named: a key has at most one pending message) is superseded as before.
CREATE OR REPLACE FUNCTION outbox_put(p_key text, p_run uuid, p_kind text, p_status text,
                                      p_reason text, p_message text, p_target jsonb,
                                      p_secret text)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    new_id bigint;
BEGIN
    INSERT INTO outbox (key, run_id, kind, status, reason, message, target, secret)
    VALUES (p_key, p_run, p_kind, p_status, p_reason, p_message, p_target, p_secret)
    RETURNING id INTO new_id;
    -- Locks the key until commit: writers of one key queue here.
    INSERT INTO outbox_keys (key, pending_id) VALUES (p_key, new_id)
    ON CONFLICT (key) DO UPDATE SET pending_id = EXCLUDED.pending_id;
    UPDATE outbox SET state = 'superseded', finished_at = now()
    WHERE key = p_key AND state = 'pending' AND id <> new_id;
    PERFORM pg_notify('vfi_outbox', '');
END $$;
