-- The inbound queue (see the SQLite migration 0004): a message is answered 250 once it is here; a
-- processor claims it with a lease, turns it into its e-mails, tasks and events, and deletes it in
-- the same transaction. seq is the arrival order.
CREATE TABLE inbound_queue (
    seq         bigserial PRIMARY KEY,
    id          text NOT NULL UNIQUE,
    sha256      text NOT NULL,
    size        integer NOT NULL,
    raw         bytea NOT NULL,
    envelope    text NOT NULL,
    received_at double precision NOT NULL,
    attempts    integer NOT NULL DEFAULT 0,
    worker      text,
    lease_until double precision
);
ALTER TABLE inbound_queue ALTER COLUMN raw SET STORAGE EXTERNAL;

-- Queue a group of received messages in one transaction; rings the processors' doorbell.
CREATE FUNCTION mailgate_enqueue(ids text[], hashes text[], raws bytea[], envelopes text[], t double precision)
RETURNS double precision
LANGUAGE plpgsql AS $$
DECLARE
    t_now double precision := mailgate_now(t);
BEGIN
    INSERT INTO inbound_queue (id, sha256, size, raw, envelope, received_at)
    SELECT x.id, x.sha256, length(x.raw), x.raw, x.envelope, t_now
    FROM unnest(ids, hashes, raws, envelopes) AS x(id, sha256, raw, envelope);
    PERFORM pg_notify('mailgate_inbound', '');
    RETURN t_now;
END $$;

-- A group of processed messages in one transaction and one round trip. Each item is
-- {"entry", "worker", "emails": [...]} (e-mails as mailgate_deliver reads them); an item whose entry
-- ``worker`` no longer holds changes nothing and gets {"error": "MG002", "message": ...}; the others
-- get {"emails": [new ids], "events": [ids]}. Returns {"now": t, "results": [...]}.
CREATE FUNCTION mailgate_deliver_inbound(batch jsonb, t double precision) RETURNS jsonb
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
    IF any_events THEN
        PERFORM pg_notify('mailgate_events', '');
    END IF;
    IF any_tasks THEN
        PERFORM pg_notify('mailgate_tasks', '');
    END IF;
    RETURN jsonb_build_object('now', t_now, 'results', results);
END $$;
