-- Automations (see the SQLite migration 0008 and AUTOMATIONS.md §4.3): the same tables in PostgreSQL's
-- types, and the fenced part of a commit as functions. New SQLSTATEs: MG004 an automation's fence did
-- not hold (AutomationFenced), MG005 a message names no target (MailgateError).
CREATE TABLE automations (
    seq          bigserial PRIMARY KEY,
    id           text NOT NULL UNIQUE,
    cls          text NOT NULL,
    session_id   text,
    state        text NOT NULL CHECK (state IN ('running', 'finished', 'failed', 'killed')),
    data         text NOT NULL,
    version      integer NOT NULL,
    unique_key   text,
    key          text NOT NULL UNIQUE,
    owner        text NOT NULL,
    wake_at      double precision,
    claim_holder text,
    claim_until  double precision,
    created_at   double precision NOT NULL,
    updated_at   double precision NOT NULL,
    finished_at  double precision
);
-- One running instance per class and business key, decided by the database.
CREATE UNIQUE INDEX automations_unique ON automations (cls, unique_key) WHERE state = 'running';
CREATE INDEX automations_wake ON automations (wake_at) WHERE state = 'running';
CREATE INDEX automations_session ON automations (session_id);
CREATE INDEX automations_class ON automations (cls, state, seq);
CREATE INDEX automations_ended ON automations (state, finished_at);

CREATE TABLE automation_steps (
    seq                 bigserial PRIMARY KEY,
    id                  text NOT NULL UNIQUE,
    automation_id       text NOT NULL,
    previous_id         text,
    split_id            text,
    node                text NOT NULL,
    state               text NOT NULL CHECK (state IN ('waiting', 'interaction', 'running', 'done', 'skipped', 'failed', 'joined')),
    message             text,
    result              text,
    error_type          text,
    error_message       text,
    error_trace         text,
    wake_at             double precision,
    attempts            integer NOT NULL DEFAULT 0,
    created_at          double precision NOT NULL,
    started_at          double precision,
    finished_at         double precision,
    assignee_user       text,
    assignee_privileges text,
    submitted_by        text
);
CREATE INDEX automation_steps_automation ON automation_steps (automation_id, seq);
CREATE INDEX automation_steps_interaction ON automation_steps (state) WHERE state = 'interaction';

CREATE TABLE automation_messages (
    seq             bigserial PRIMARY KEY,
    id              text NOT NULL UNIQUE,
    automation_id   text,
    broadcast_class text,
    message         text NOT NULL,
    token           text,
    data            text NOT NULL,
    sender          text NOT NULL,
    state           text NOT NULL CHECK (state IN ('queued', 'delivered', 'dropped')),
    result          text,
    created_at      double precision NOT NULL,
    delivered_at    double precision
);
CREATE INDEX automation_messages_queued ON automation_messages (automation_id, seq) WHERE state = 'queued';
CREATE INDEX automation_messages_automation ON automation_messages (automation_id, seq);

CREATE TABLE automation_journal (
    step_id    text NOT NULL,
    call_index integer NOT NULL,
    kind       text NOT NULL,
    result     text NOT NULL,
    created_at double precision NOT NULL,
    PRIMARY KEY (step_id, call_index)
);

-- A background task started by an automation's step (or threaded=True) names it.
ALTER TABLE tasks ADD COLUMN automation_id text;

-- Steps entered (AutomationUpdate.steps_opened / create_automation), in the order given. (plpgsql,
-- not sql: its plan is kept between calls.)
CREATE FUNCTION mailgate_insert_steps(aid text, steps jsonb, t_now double precision) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF jsonb_array_length(COALESCE(steps, '[]')) = 0 THEN
        RETURN;
    END IF;
    INSERT INTO automation_steps (id, automation_id, previous_id, split_id, node, state, message, result, error_type,
        error_message, error_trace, wake_at, attempts, created_at, started_at, finished_at, assignee_user,
        assignee_privileges)
    SELECT s->>'id', aid, s->>'previous_id', s->>'split_id', s->>'node', s->>'state', s->>'message', s->>'result',
        s->>'error_type', s->>'error_message', s->>'error_trace', (s->>'wake_at')::double precision,
        (s->>'attempts')::integer, t_now,
        CASE WHEN (s->>'started')::boolean OR s->>'state' IN ('running', 'done', 'skipped', 'failed', 'joined') THEN t_now END,
        CASE WHEN s->>'state' IN ('done', 'skipped', 'failed', 'joined') THEN t_now END,
        s->>'assignee_user', s->>'assignee_privileges'
    FROM jsonb_array_elements(steps) WITH ORDINALITY AS e(s, n) ORDER BY n;
END $$;

-- Messages sent: a running target becomes due now; a target not running gets its message dropped.
-- Rings the runners' doorbell.
CREATE FUNCTION mailgate_send_messages(msgs jsonb, t_now double precision) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    m jsonb;
    st text;
BEGIN
    FOR m IN SELECT value FROM jsonb_array_elements(COALESCE(msgs, '[]')) LOOP
        st := 'queued';
        IF m->>'automation_id' IS NOT NULL THEN
            UPDATE automations SET wake_at = LEAST(COALESCE(wake_at, t_now), t_now)
            WHERE id = m->>'automation_id' AND state = 'running';
            IF NOT FOUND THEN
                st := 'dropped';
            END IF;
        ELSIF m->>'broadcast_class' IS NULL THEN
            RAISE EXCEPTION USING ERRCODE = 'MG005', MESSAGE = format(
                'message %s names neither an automation nor a class to broadcast to', m->>'id');
        END IF;
        INSERT INTO automation_messages (id, automation_id, broadcast_class, message, token, data, sender, state, created_at)
        VALUES (m->>'id', m->>'automation_id', m->>'broadcast_class', m->>'message', m->>'token', m->>'data',
                m->>'sender', st, t_now);
    END LOOP;
    IF jsonb_array_length(COALESCE(msgs, '[]')) > 0 THEN
        PERFORM pg_notify('mailgate_automations', '');
    END IF;
END $$;

-- Create an automation with its first steps and messages; when a running one of its class holds its
-- unique key, queue the messages to that one instead. Returns {"id": the automation's, "created": bool}.
CREATE FUNCTION mailgate_start_automation(x jsonb, t_now double precision) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    a jsonb := x->'automation';
    wake double precision;
    target text;
    created boolean;
BEGIN
    wake := COALESCE((a->>'wake_at')::double precision,
                     CASE WHEN jsonb_array_length(COALESCE(x->'steps', '[]')) > 0
                            OR jsonb_array_length(COALESCE(x->'messages', '[]')) > 0 THEN t_now END);
    IF a->>'session_id' IS NOT NULL AND NOT EXISTS (SELECT 1 FROM sessions WHERE id = a->>'session_id') THEN
        RAISE EXCEPTION USING ERRCODE = 'MG003', MESSAGE = format(
            'no session %L to bind automation %s to', a->>'session_id', a->>'cls');
    END IF;
    LOOP  -- again only when the running one ended between the conflict and the read
        INSERT INTO automations (id, cls, session_id, state, data, version, unique_key, key, owner, wake_at,
                                 created_at, updated_at)
        VALUES (a->>'id', a->>'cls', a->>'session_id', 'running', a->>'data', 1, a->>'unique_key', a->>'key',
                a->>'owner', wake, t_now, t_now)
        ON CONFLICT (cls, unique_key) WHERE state = 'running' DO NOTHING
        RETURNING id INTO target;
        IF FOUND THEN
            created := true;
            EXIT;
        END IF;
        SELECT id INTO target FROM automations
        WHERE cls = a->>'cls' AND unique_key = a->>'unique_key' AND state = 'running';
        IF FOUND THEN
            created := false;
            EXIT;
        END IF;
    END LOOP;
    IF created THEN
        PERFORM mailgate_insert_steps(target, x->'steps', t_now);
    END IF;
    IF jsonb_array_length(COALESCE(x->'messages', '[]')) > 0 THEN
        PERFORM mailgate_send_messages((
            SELECT jsonb_agg(m || jsonb_build_object('automation_id', target, 'broadcast_class', NULL) ORDER BY n)
            FROM jsonb_array_elements(x->'messages') WITH ORDINALITY AS e(m, n)), t_now);
    ELSIF created AND wake <= t_now THEN
        PERFORM pg_notify('mailgate_automations', '');
    END IF;
    RETURN jsonb_build_object('id', target, 'created', created);
END $$;

-- Claim up to ``lim`` due automations that no live claim holds, skipping those other runners are
-- claiming this very moment, with their open steps and queued messages: one round trip. Returns
-- {"automations": [...], "steps": [...], "messages": [...]}, rows as JSON objects (json, not jsonb:
-- each double precision keeps its exact text).
CREATE FUNCTION mailgate_claim_automations(who text, lim integer, lease double precision, t double precision)
RETURNS json
LANGUAGE plpgsql AS $$
DECLARE
    t_now double precision := mailgate_now(t);
    claimed json;
    ids text[];
BEGIN
    WITH picked AS (
        SELECT seq FROM automations
        WHERE state = 'running' AND wake_at <= t_now AND (claim_until IS NULL OR claim_until < t_now)
        ORDER BY wake_at LIMIT lim FOR UPDATE SKIP LOCKED
    ), taken AS (
        UPDATE automations a SET claim_holder = who, claim_until = t_now + lease
        FROM picked WHERE a.seq = picked.seq RETURNING a.*
    )
    SELECT COALESCE(json_agg(row_to_json(taken) ORDER BY taken.wake_at, taken.seq), '[]'), array_agg(taken.id)
    INTO claimed, ids FROM taken;
    RETURN json_build_object(
        'automations', claimed,
        'steps', (SELECT COALESCE(json_agg(row_to_json(s) ORDER BY s.seq), '[]') FROM automation_steps s
                  WHERE s.automation_id = ANY(ids) AND s.state IN ('waiting', 'interaction', 'running')),
        'messages', (SELECT COALESCE(json_agg(row_to_json(m) ORDER BY m.seq), '[]') FROM automation_messages m
                     WHERE m.automation_id = ANY(ids) AND m.state = 'queued'));
END $$;

-- The automation part of one Changes: each update fenced by version and claim holder (MG004 refuses
-- the whole Changes), its steps, messages consumed and journal; then the messages sent.
CREATE FUNCTION mailgate_apply_automations(c jsonb, t_now double precision) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    u jsonb;
    s jsonb;
    d jsonb;
    aid text;
    ended boolean;
    keep boolean;
    found_version integer;
    found_holder text;
    due boolean := false;
BEGIN
    FOR u IN SELECT value FROM jsonb_array_elements(COALESCE(c->'automations', '[]')) LOOP
        aid := u->>'automation_id';
        ended := u->>'state' IN ('finished', 'failed', 'killed');
        keep := COALESCE((u->>'keep_claim')::boolean, false);
        UPDATE automations SET state = u->>'state', data = COALESCE(u->>'data', data), version = version + 1,
            wake_at = CASE WHEN ended THEN NULL WHEN keep AND u->>'wake_at' IS NULL THEN wake_at
                           ELSE (u->>'wake_at')::double precision END, updated_at = t_now,
            finished_at = CASE WHEN ended THEN t_now END,
            claim_holder = CASE WHEN keep THEN claim_holder END, claim_until = CASE WHEN keep THEN claim_until END
        WHERE id = aid AND version = (u->>'expected_version')::integer
            AND (u->>'holder' IS NULL OR claim_holder = u->>'holder');
        IF NOT FOUND THEN
            SELECT version, claim_holder INTO found_version, found_holder FROM automations WHERE id = aid;
            IF NOT FOUND THEN
                RAISE EXCEPTION USING ERRCODE = 'MG004', MESSAGE = format(
                    'automation %s no longer exists (killed or deleted); nothing was saved', aid);
            ELSIF found_version <> (u->>'expected_version')::integer THEN
                RAISE EXCEPTION USING ERRCODE = 'MG004', MESSAGE = format(
                    'automation %s is at version %s, not %s: it was changed since it was read (another run, a submit, '
                    'a retry or a goto); nothing was saved', aid, found_version, u->>'expected_version');
            END IF;
            RAISE EXCEPTION USING ERRCODE = 'MG004', MESSAGE = format(
                'automation %s is claimed by %s, not %s (the claim lapsed and was taken over or released); '
                'nothing was saved', aid, COALESCE(found_holder, 'nobody'), u->>'holder');
        END IF;
        FOR s IN SELECT value FROM jsonb_array_elements(COALESCE(u->'steps_finished', '[]')) LOOP
            UPDATE automation_steps SET state = s->>'state', message = s->>'message', result = s->>'result',
                error_type = s->>'error_type', error_message = s->>'error_message', error_trace = s->>'error_trace',
                wake_at = (s->>'wake_at')::double precision,
                attempts = COALESCE((s->>'attempts')::integer, attempts),
                submitted_by = COALESCE(s->>'submitted_by', submitted_by),
                started_at = CASE WHEN s->>'state' IN ('running', 'done', 'skipped', 'failed', 'joined')
                                  THEN COALESCE(started_at, t_now) ELSE started_at END,
                finished_at = CASE WHEN s->>'state' IN ('done', 'skipped', 'failed', 'joined') THEN t_now END
            WHERE id = s->>'step_id' AND automation_id = aid;
            IF NOT FOUND THEN
                RAISE EXCEPTION USING ERRCODE = 'MG003', MESSAGE = format(
                    'automation %s has no step %s; nothing was saved', aid, s->>'step_id');
            END IF;
        END LOOP;
        PERFORM mailgate_insert_steps(aid, u->'steps_opened', t_now);
        FOR d IN SELECT value FROM jsonb_array_elements(COALESCE(u->'messages_done', '[]')) LOOP
            UPDATE automation_messages SET state = d->>'state', result = d->>'result', delivered_at = t_now
            WHERE id = d->>'message_id' AND state = 'queued' AND (automation_id = aid OR broadcast_class IS NOT NULL);
            IF NOT FOUND THEN
                RAISE EXCEPTION USING ERRCODE = 'MG004', MESSAGE = format(
                    'message %s is not queued for automation %s (consumed already, or another automation''s); '
                    'nothing was saved', d->>'message_id', aid);
            END IF;
        END LOOP;
        INSERT INTO automation_journal
        SELECT x.step_id, x.call_index, x.kind, x.result, t_now
        FROM jsonb_to_recordset(COALESCE(u->'journal', '[]')) AS x(step_id text, call_index integer, kind text, result text)
        ON CONFLICT (step_id, call_index) DO NOTHING;
        IF ended THEN  -- messages that arrived during its last run: it will never read them
            UPDATE automation_messages SET state = 'dropped', delivered_at = t_now WHERE automation_id = aid AND state = 'queued';
        ELSE  -- a message queued while it ran keeps it due
            UPDATE automations SET wake_at = t_now WHERE id = aid
                AND EXISTS (SELECT 1 FROM automation_messages WHERE automation_id = aid AND state = 'queued');
            due := due OR FOUND OR (u->>'wake_at')::double precision <= t_now;
        END IF;
    END LOOP;
    PERFORM mailgate_send_messages(c->'messages', t_now);
    IF due THEN
        PERFORM pg_notify('mailgate_automations', '');
    END IF;
END $$;

-- mailgate_apply learns automations and tasks' automation_id: the session part keeps its old body
-- under a new name, and the automations' fence is checked first, in the same transaction.
ALTER FUNCTION mailgate_apply(jsonb, double precision) RENAME TO mailgate_apply_sessions;
CREATE FUNCTION mailgate_apply(c jsonb, t_now double precision) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    outcome jsonb;
    x jsonb;
    started jsonb := '[]';
BEGIN
    FOR x IN SELECT value FROM jsonb_array_elements(COALESCE(c->'new_automations', '[]')) LOOP
        started := started || jsonb_build_array(mailgate_start_automation(x, t_now));
    END LOOP;
    IF c ? 'automations' OR c ? 'messages' THEN
        PERFORM mailgate_apply_automations(c, t_now);
    END IF;
    outcome := mailgate_apply_sessions(c, t_now);
    IF jsonb_array_length(COALESCE(c->'new_tasks', '[]')) > 0 THEN
        UPDATE tasks k SET automation_id = x.automation_id
        FROM jsonb_to_recordset(c->'new_tasks') AS x(id text, automation_id text)
        WHERE x.automation_id IS NOT NULL AND k.id = x.id;
    END IF;
    IF jsonb_array_length(started) > 0 THEN
        outcome := outcome || jsonb_build_object('automations', started);
    END IF;
    RETURN outcome;
END $$;

-- A session's automations die with it (exit, delete, inactivity), history and journal included.
ALTER FUNCTION mailgate_delete_session(text) RENAME TO mailgate_delete_session_rows;
CREATE FUNCTION mailgate_delete_session(sid text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM automation_journal WHERE step_id IN (
        SELECT s.id FROM automation_steps s JOIN automations a ON a.id = s.automation_id WHERE a.session_id = sid);
    DELETE FROM automation_steps WHERE automation_id IN (SELECT id FROM automations WHERE session_id = sid);
    DELETE FROM automation_messages WHERE automation_id IN (SELECT id FROM automations WHERE session_id = sid);
    DELETE FROM automations WHERE session_id = sid;
    RETURN mailgate_delete_session_rows(sid);
END $$;

-- Claimed tasks carry their automation_id (its end sends ``task_done`` to that automation): the same
-- claim as in 0002_functions.sql with one more column.
DROP FUNCTION mailgate_claim(text, integer, double precision, double precision);
CREATE FUNCTION mailgate_claim(who text, lim integer, lease double precision, t double precision)
RETURNS TABLE (exhausted boolean, id text, session_id text, interview text, action text, arguments text,
               "user" text, ui_notification text, state text, attempts integer, max_attempts integer,
               worker text, lease_until double precision, created_at double precision,
               started_at double precision, finished_at double precision, result text, error_type text,
               error_message text, error_trace text, variables text, automation_id text)
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
            k.finished_at, k.result, k.error_type, k.error_message, k.error_trace, k.variables, k.automation_id
    )
    SELECT stale, c.id, c.session_id, c.interview, c.action, c.arguments, c."user", c.ui_notification, c.state,
        c.attempts, c.max_attempts, c.worker, c.lease_until, c.created_at, c.started_at, c.finished_at,
        c.result, c.error_type, c.error_message, c.error_trace, c.variables, c.automation_id
    FROM claimed c ORDER BY c.seq;
    IF NOT FOUND AND stale THEN  -- nothing claimed: one row that carries the flag alone
        RETURN QUERY SELECT true, NULL::text, NULL::text, NULL::text, NULL::text, NULL::text, NULL::text,
            NULL::text, NULL::text, NULL::integer, NULL::integer, NULL::text, NULL::double precision,
            NULL::double precision, NULL::double precision, NULL::double precision, NULL::text, NULL::text,
            NULL::text, NULL::text, NULL::text, NULL::text;
    END IF;
END $$;
