-- Server-side functions: each store call that writes several rows is one function call, so that it
-- costs one round trip whatever the driver. Errors of the domain are raised with mailgate's own
-- SQLSTATEs: MG001 version conflict, MG002 task lease lost, MG003 session not found.
-- ``t`` is the time to use: NULL means the database's clock (tests pass their own).

CREATE FUNCTION mailgate_now(t double precision) RETURNS double precision
LANGUAGE sql VOLATILE AS $$ SELECT COALESCE(t, extract(epoch FROM clock_timestamp())::double precision) $$;

CREATE FUNCTION mailgate_delete_session(sid text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    existed boolean;
BEGIN
    DELETE FROM sessions WHERE id = sid;
    existed := FOUND;
    WITH gone AS (DELETE FROM emails WHERE session_id = sid RETURNING sha256)
    DELETE FROM raw_messages r WHERE r.sha256 IN (SELECT DISTINCT sha256 FROM gone)
        AND NOT EXISTS (SELECT 1 FROM emails e WHERE e.sha256 = r.sha256 AND e.session_id <> sid);
    DELETE FROM mailboxes WHERE session_id = sid;
    DELETE FROM tasks WHERE session_id = sid;
    DELETE FROM events WHERE session_id = sid;
    DELETE FROM session_leases WHERE session_id = sid;
    RETURN existed;
END $$;

CREATE FUNCTION mailgate_check_unleased(sid text, expected integer, t_now double precision) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    lease_holder text;
    current_version integer;
BEGIN
    SELECT holder INTO lease_holder FROM session_leases WHERE session_id = sid AND expires_at >= t_now;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'MG001',
            MESSAGE = format('session %s is leased by %s; nothing was saved', sid, lease_holder);
    END IF;
    SELECT version INTO current_version FROM sessions WHERE id = sid;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'MG003',
            MESSAGE = format('session %s was deleted while the action ran; nothing was saved', sid);
    END IF;
    IF current_version <> expected THEN
        RAISE EXCEPTION USING ERRCODE = 'MG001',
            MESSAGE = format('session %s is at version %s, not %s; nothing was saved', sid, current_version, expected);
    END IF;
END $$;

-- One Changes (see mailgate.store.base.Changes, encoded by the backend): all or nothing.
-- Returns {"version": n|null, "events": [ids...]}.
CREATE FUNCTION mailgate_apply(c jsonb, t_now double precision) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    s jsonb := c->'save';
    f jsonb := c->'finish';
    u jsonb := c->'unleased';
    guard boolean;
    new_version integer;
    current_version integer;
    ids jsonb := '[]';
    e jsonb;
    event_id bigint;
BEGIN
    -- An unleased save of the same session at the same version checks the lease in its UPDATE.
    guard := s IS NOT NULL AND u IS NOT NULL AND u->>0 = s->>'session_id' AND (u->>1)::integer = (s->>'expected_version')::integer;
    IF u IS NOT NULL AND NOT guard THEN
        PERFORM mailgate_check_unleased(u->>0, (u->>1)::integer, t_now);
    END IF;
    IF f IS NOT NULL THEN
        UPDATE tasks SET state = f->>'state', result = f->>'result', error_type = f->>'error_type',
            error_message = f->>'error_message', error_trace = f->>'error_trace', variables = f->>'variables',
            finished_at = t_now, lease_until = NULL
        WHERE id = f->>'task_id' AND worker = f->>'worker' AND state = 'running';
        IF NOT FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'MG002', MESSAGE = format(
                'task %s is no longer claimed by worker %s (its lease expired and it was claimed again)',
                f->>'task_id', f->>'worker');
        END IF;
    END IF;
    IF s IS NOT NULL THEN
        UPDATE sessions SET answers = s->>'answers', version = version + 1, modified_at = t_now,
            allow_cron = (s->>'allow_cron')::boolean,
            accessed_at = CASE WHEN (s->>'touch')::boolean THEN t_now ELSE accessed_at END
        WHERE id = s->>'session_id' AND version = (s->>'expected_version')::integer
            AND (NOT guard OR NOT EXISTS (SELECT 1 FROM session_leases
                                          WHERE session_id = s->>'session_id' AND expires_at >= t_now))
        RETURNING version INTO new_version;
        IF NOT FOUND THEN
            IF guard THEN
                PERFORM mailgate_check_unleased(s->>'session_id', (s->>'expected_version')::integer, t_now);
            END IF;
            SELECT version INTO current_version FROM sessions WHERE id = s->>'session_id';
            IF NOT FOUND THEN
                RAISE EXCEPTION USING ERRCODE = 'MG003', MESSAGE = format(
                    'session %s was deleted while the action ran; nothing was saved', s->>'session_id');
            END IF;
            RAISE EXCEPTION USING ERRCODE = 'MG001', MESSAGE = format(
                'session %s is at version %s, not %s: someone saved it since it was read; nothing was saved',
                s->>'session_id', current_version, s->>'expected_version');
        END IF;
    END IF;
    IF c->>'delete_session' IS NOT NULL THEN
        PERFORM mailgate_delete_session(c->>'delete_session');
    END IF;
    IF jsonb_array_length(c->'new_tasks') > 0 THEN
        INSERT INTO tasks (id, session_id, interview, action, arguments, "user", ui_notification, state, max_attempts, created_at)
        SELECT x.id, x.session_id, x.interview, x.action, x.arguments, x."user", x.ui_notification, 'queued', x.max_attempts, t_now
        FROM jsonb_to_recordset(c->'new_tasks') AS x(id text, session_id text, interview text, action text,
            arguments text, "user" text, ui_notification text, max_attempts integer);
    END IF;
    FOR e IN SELECT value FROM jsonb_array_elements(c->'events') LOOP
        INSERT INTO events (session_id, kind, payload, created_at)
        VALUES (e->>'session_id', e->>'kind', e->>'payload', t_now) RETURNING id INTO event_id;
        ids := ids || to_jsonb(event_id);
    END LOOP;
    IF jsonb_array_length(c->'mailboxes') > 0 THEN
        INSERT INTO mailboxes (local_part, session_id, key, idx, owner, created_at, expires_at)
        SELECT x.local_part, x.session_id, x.key, x.index, x.owner, t_now, x.expires_at
        FROM jsonb_to_recordset(c->'mailboxes') AS x(local_part text, session_id text, key text, index text,
            owner text, expires_at double precision)
        ON CONFLICT (local_part) DO UPDATE SET expires_at = excluded.expires_at;
    END IF;
    IF c->'release_lease' IS NOT NULL AND jsonb_typeof(c->'release_lease') = 'array' THEN
        DELETE FROM session_leases WHERE session_id = c->'release_lease'->>0 AND holder = c->'release_lease'->>1;
    END IF;
    RETURN jsonb_build_object('version', new_version, 'events', ids);
END $$;

-- A group of Changes in one transaction and one round trip, each all or nothing on its own: a
-- domain error undoes that one alone (a subtransaction) and is returned in its place.
-- Returns {"now": t, "results": [{"version":..,"events":[..]} | {"error": sqlstate, "message": text}]}.
CREATE FUNCTION mailgate_commit(batch jsonb, t double precision) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    t_now double precision := mailgate_now(t);
    results jsonb := '[]';
    item jsonb;
    outcome jsonb;
    any_events boolean := false;
    any_tasks boolean := false;
BEGIN
    IF jsonb_array_length(batch) = 1 THEN  -- alone: no subtransaction needed, an error aborts it all
        outcome := mailgate_apply(batch->0, t_now);
        results := jsonb_build_array(outcome);
        any_events := jsonb_array_length(outcome->'events') > 0;
        any_tasks := jsonb_array_length(batch->0->'new_tasks') > 0;
    ELSE
        FOR item IN SELECT value FROM jsonb_array_elements(batch) LOOP
            BEGIN
                outcome := mailgate_apply(item, t_now);
                any_events := any_events OR jsonb_array_length(outcome->'events') > 0;
                any_tasks := any_tasks OR jsonb_array_length(item->'new_tasks') > 0;
            EXCEPTION WHEN SQLSTATE 'MG001' OR SQLSTATE 'MG002' OR SQLSTATE 'MG003' THEN
                outcome := jsonb_build_object('error', SQLSTATE, 'message', SQLERRM);
            END;
            results := results || jsonb_build_array(outcome);
        END LOOP;
    END IF;
    IF any_events THEN
        PERFORM pg_notify('mailgate_events', '');
    END IF;
    IF any_tasks THEN  -- the worker pools of other processes claim at once instead of at their next poll
        PERFORM pg_notify('mailgate_tasks', '');
    END IF;
    RETURN jsonb_build_object('now', t_now, 'results', results);
END $$;

-- Take a session's lease if it is free or expired; returns the holder's lease when it is not.
-- On success, the session as read under the new lease (no row when the session does not exist).
CREATE FUNCTION mailgate_acquire_lease(sid text, who text, ttl double precision, budget double precision,
                                       t double precision)
RETURNS TABLE (acquired boolean, holder text, acquired_at double precision, expires_at double precision,
               budget_until double precision, s_interview text, s_answers text, s_version integer,
               s_owner text, s_created_at double precision, s_modified_at double precision,
               s_accessed_at double precision, s_exists boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    t_now double precision := mailgate_now(t);
BEGIN
    INSERT INTO session_leases AS l VALUES (sid, who, t_now, t_now + ttl, t_now + budget)
    ON CONFLICT (session_id) DO UPDATE SET holder = excluded.holder, acquired_at = excluded.acquired_at,
        expires_at = excluded.expires_at, budget_until = excluded.budget_until
    WHERE l.expires_at < t_now;
    IF FOUND THEN
        RETURN QUERY SELECT true, who, t_now, t_now + ttl, t_now + budget, s.interview, s.answers, s.version,
            s.owner, s.created_at, s.modified_at, s.accessed_at, s.id IS NOT NULL
            FROM (SELECT 1) AS one LEFT JOIN sessions s ON s.id = sid;
    ELSE
        RETURN QUERY SELECT false, l.holder, l.acquired_at, l.expires_at, l.budget_until, NULL::text, NULL::text,
            NULL::integer, NULL::text, NULL::double precision, NULL::double precision, NULL::double precision, false
            FROM session_leases l WHERE l.session_id = sid;
    END IF;
END $$;

-- Claim up to ``lim`` runnable tasks (queued, or running with an expired lease and attempts left),
-- skipping those other workers are claiming this very moment. ``exhausted`` tells whether expired
-- tasks with no attempts left wait to be failed (the backend does that in its own transaction).
CREATE FUNCTION mailgate_claim(who text, lim integer, lease double precision, t double precision)
RETURNS TABLE (exhausted boolean, id text, session_id text, interview text, action text, arguments text,
               "user" text, ui_notification text, state text, attempts integer, max_attempts integer,
               worker text, lease_until double precision, created_at double precision,
               started_at double precision, finished_at double precision, result text, error_type text,
               error_message text, error_trace text, variables text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    t_now double precision := mailgate_now(t);
    stale boolean;
BEGIN
    stale := EXISTS (SELECT 1 FROM tasks k WHERE k.state = 'running' AND k.lease_until < t_now
                     AND k.attempts >= k.max_attempts);
    RETURN QUERY
    WITH picked AS (
        SELECT k.seq FROM tasks k
        WHERE k.state IN ('queued', 'running')
          AND (k.state = 'queued' OR (k.lease_until < t_now AND k.attempts < k.max_attempts))
        ORDER BY k.seq LIMIT lim FOR UPDATE SKIP LOCKED
    ), claimed AS (
        UPDATE tasks k SET state = 'running', worker = who, lease_until = t_now + lease,
            attempts = k.attempts + 1, started_at = t_now
        FROM picked WHERE k.seq = picked.seq
        RETURNING k.seq, k.id, k.session_id, k.interview, k.action, k.arguments, k."user", k.ui_notification,
            k.state, k.attempts, k.max_attempts, k.worker, k.lease_until, k.created_at, k.started_at,
            k.finished_at, k.result, k.error_type, k.error_message, k.error_trace, k.variables
    )
    SELECT stale, c.id, c.session_id, c.interview, c.action, c.arguments, c."user", c.ui_notification, c.state,
        c.attempts, c.max_attempts, c.worker, c.lease_until, c.created_at, c.started_at, c.finished_at,
        c.result, c.error_type, c.error_message, c.error_trace, c.variables
    FROM claimed c ORDER BY c.seq;
    IF NOT FOUND AND stale THEN  -- nothing claimed: one row that carries the flag alone
        RETURN QUERY SELECT true, NULL::text, NULL::text, NULL::text, NULL::text, NULL::text, NULL::text,
            NULL::text, NULL::text, NULL::integer, NULL::integer, NULL::text, NULL::double precision,
            NULL::double precision, NULL::double precision, NULL::double precision, NULL::text, NULL::text,
            NULL::text, NULL::text, NULL::text;
    END IF;
END $$;

-- Fail the expired tasks that have no attempts left (their worker kept dying), returning them.
CREATE FUNCTION mailgate_fail_exhausted(t double precision)
RETURNS SETOF tasks
LANGUAGE sql AS $$
    UPDATE tasks SET state = 'failed', finished_at = mailgate_now(t), lease_until = NULL, error_type = 'WorkerLost',
        error_message = 'the worker running this task stopped (killed or crashed) ' || attempts ||
            ' times; giving up. Fix the cause, then run: mailgate tasks retry ' || id
    WHERE seq IN (SELECT seq FROM tasks WHERE state = 'running' AND lease_until < mailgate_now(t)
                  AND attempts >= max_attempts ORDER BY seq FOR UPDATE SKIP LOCKED)
    RETURNING *
$$;

-- Received messages, a group of them in one transaction: each one's raw bytes once per content hash,
-- and each new e-mail (duplicates are skipped) with its task and event. ``groups`` holds one array of
-- e-mails per message. Returns {"now": t, "results": [{"emails": [new ids], "events": [ids]}, ...]}.
CREATE FUNCTION mailgate_deliver(hashes text[], raws bytea[], groups jsonb, t double precision) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    t_now double precision := mailgate_now(t);
    n integer;
    e jsonb;
    new_ids jsonb;
    events jsonb;
    outcome jsonb;
    results jsonb := '[]';
    any_events boolean := false;
    any_tasks boolean := false;
BEGIN
    FOR n IN 1 .. coalesce(array_length(hashes, 1), 0) LOOP
        INSERT INTO raw_messages VALUES (hashes[n], length(raws[n]), raws[n]) ON CONFLICT (sha256) DO NOTHING;
        new_ids := '[]';
        events := '[]';
        FOR e IN SELECT value FROM jsonb_array_elements(groups->(n - 1)) LOOP
            INSERT INTO emails (id, local_part, session_id, message_id, sha256, dedupe, size, envelope, parsed,
                                authentication, received_at)
            VALUES (e->>'id', e->>'local_part', e->>'session_id', e->>'message_id', hashes[n], e->>'dedupe',
                    length(raws[n]), e->>'envelope', e->>'parsed', e->>'authentication', t_now)
            ON CONFLICT (local_part, dedupe) DO NOTHING;
            IF FOUND THEN
                new_ids := new_ids || to_jsonb(e->>'id');
                outcome := mailgate_apply(e->'changes', t_now);
                events := events || (outcome->'events');
                any_tasks := any_tasks OR jsonb_array_length(e->'changes'->'new_tasks') > 0;
            END IF;
        END LOOP;
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
