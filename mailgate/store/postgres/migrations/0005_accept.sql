-- Accepting mail without a call per check (issue 14).
--
-- 1. The mailbox doorbell: every node caches the mailboxes its RCPT lookups found, and drops an entry
--    when the mailbox is deleted or changed in a way that could refuse mail (a shorter expiry, another
--    session), told by NOTIFY mailgate_mailboxes with the local part (an empty payload: all of them).
--    An expiry that only moves later needs no word: a cached entry that looks expired is read again.
CREATE FUNCTION mailgate_mailbox_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('mailgate_mailboxes', '');
    ELSE
        PERFORM pg_notify('mailgate_mailboxes', OLD.local_part);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER mailboxes_deleted AFTER DELETE ON mailboxes
FOR EACH ROW EXECUTE FUNCTION mailgate_mailbox_changed();

CREATE TRIGGER mailboxes_changed AFTER UPDATE ON mailboxes
FOR EACH ROW WHEN (NOT (
    NEW.local_part = OLD.local_part AND NEW.session_id = OLD.session_id AND NEW.key = OLD.key
    AND NEW.idx = OLD.idx AND NEW.owner = OLD.owner
    AND ((OLD.expires_at IS NULL AND NEW.expires_at IS NULL)
         OR (OLD.expires_at IS NOT NULL AND NEW.expires_at IS NOT NULL AND NEW.expires_at >= OLD.expires_at))))
EXECUTE FUNCTION mailgate_mailbox_changed();

CREATE TRIGGER mailboxes_truncated AFTER TRUNCATE ON mailboxes
FOR EACH STATEMENT EXECUTE FUNCTION mailgate_mailbox_changed();

-- 2. The DATA-time check folded into the enqueue: ``boxes`` holds, for each message, the
--    [local part, session id] pairs accepted at RCPT (or JSON null: not checked). A message none of
--    whose mailboxes still takes mail (the row for that session, the session, not expired) is not
--    queued; ``refused`` lists those messages (1-based). The check and the insert share one
--    snapshot-consistent statement pair in one transaction and one round trip.
DROP FUNCTION mailgate_enqueue(text[], text[], bytea[], text[], double precision);

CREATE FUNCTION mailgate_enqueue(ids text[], hashes text[], raws bytea[], envelopes text[], boxes jsonb,
                                 t double precision, OUT received double precision, OUT refused integer[])
LANGUAGE plpgsql AS $$
BEGIN
    received := mailgate_now(t);
    SELECT COALESCE(array_agg(x.n::integer), '{}') INTO refused
    FROM jsonb_array_elements(boxes) WITH ORDINALITY AS x(rcpt, n)
    WHERE jsonb_typeof(x.rcpt) = 'array' AND NOT EXISTS (
        SELECT 1 FROM jsonb_array_elements(x.rcpt) AS r(pair)
        JOIN mailboxes m ON m.local_part = r.pair->>0 AND m.session_id = r.pair->>1
        JOIN sessions s ON s.id = m.session_id
        WHERE m.expires_at IS NULL OR m.expires_at >= received);
    INSERT INTO inbound_queue (id, sha256, size, raw, envelope, received_at)
    SELECT x.id, x.sha256, length(x.raw), x.raw, x.envelope, received
    FROM unnest(ids, hashes, raws, envelopes) WITH ORDINALITY AS x(id, sha256, raw, envelope, n)
    WHERE NOT (x.n::integer = ANY (refused));
    IF cardinality(refused) < cardinality(ids) THEN
        PERFORM pg_notify('mailgate_inbound', '');
    END IF;
END $$;
