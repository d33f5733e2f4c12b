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
END $$;

-- 3. No NOTIFY inside the queue's and the deliveries' transactions: a transaction that notifies holds
--    the server's one notification lock from its commit until its WAL flush is done, so such commits
--    cannot share a flush (measured: 8 connections committing 10 KB rows, 684-834 commits/s without
--    NOTIFY, 284-372 with it). The store rings the doorbells itself right after the commit
--    (``mailgate_ring``); the delivery says which ones ("events", "tasks": true when it added any).
CREATE OR REPLACE FUNCTION mailgate_deliver_inbound(batch jsonb, t double precision) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    t_now double precision := mailgate_now(t);
    item jsonb;
    e jsonb;
    q record;
    new_ids jsonb;
    events jsonb;
    outcome jsonb;
    results jsonb := '[]';
    any_events boolean := false;
    any_tasks boolean := false;
BEGIN
    FOR item IN SELECT value FROM jsonb_array_elements(batch) LOOP
        SELECT seq, sha256, size, received_at INTO q FROM inbound_queue
        WHERE id = item->>'entry' AND worker = item->>'worker' FOR UPDATE;
        IF NOT FOUND THEN
            results := results || jsonb_build_array(jsonb_build_object('error', 'MG002', 'message', format(
                'queued message %s is no longer held by %s (its lease expired and another processor claimed it, '
                'or it was delivered already)', item->>'entry', item->>'worker')));
            CONTINUE;
        END IF;
        IF jsonb_array_length(item->'emails') > 0 THEN
            INSERT INTO raw_messages SELECT sha256, size, raw FROM inbound_queue WHERE seq = q.seq
            ON CONFLICT (sha256) DO NOTHING;
        END IF;
        new_ids := '[]';
        events := '[]';
        FOR e IN SELECT value FROM jsonb_array_elements(item->'emails') LOOP
            INSERT INTO emails (id, local_part, session_id, message_id, sha256, dedupe, size, envelope, parsed,
                                authentication, received_at)
            VALUES (e->>'id', e->>'local_part', e->>'session_id', e->>'message_id', q.sha256, e->>'dedupe',
                    q.size, e->>'envelope', e->>'parsed', e->>'authentication', q.received_at)
            ON CONFLICT (local_part, dedupe) DO NOTHING;
            IF FOUND THEN
                new_ids := new_ids || to_jsonb(e->>'id');
                outcome := mailgate_apply(e->'changes', t_now);
                events := events || (outcome->'events');
                any_tasks := any_tasks OR jsonb_array_length(e->'changes'->'new_tasks') > 0;
            END IF;
        END LOOP;
        DELETE FROM inbound_queue WHERE seq = q.seq;
        any_events := any_events OR jsonb_array_length(events) > 0;
        results := results || jsonb_build_array(jsonb_build_object('emails', new_ids, 'events', events));
    END LOOP;
    RETURN jsonb_build_object('now', t_now, 'results', results, 'events', any_events, 'tasks', any_tasks);
END $$;

-- The doorbells, rung after the commit they announce, in a transaction of their own that writes
-- nothing but the notifications: it need not wait for a disk flush (a ring lost in a crash costs
-- only the listeners' polling interval, and a restarted node catches up anyway).
CREATE FUNCTION mailgate_ring(channels text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    channel text;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    FOREACH channel IN ARRAY channels LOOP
        PERFORM pg_notify(channel, '');
    END LOOP;
END $$;
