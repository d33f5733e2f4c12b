-- How automations' loose ends are stored: a threaded step that outlives its automation, a broadcast
-- that reaches no one (see the SQLite backend's automations.py for the same rules).
--
-- A threaded step's outcome travels with its task_done message (NewMessage.closes_step) and is written
-- to the step, if it is still running, in the task's own commit, whatever the automation's state: an
-- automation that finished before its threaded task still gets the task's result in its history.
CREATE OR REPLACE FUNCTION mailgate_send_messages(msgs jsonb, t_now double precision) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    m jsonb;
    s jsonb;
    st text;
BEGIN
    FOR m IN SELECT value FROM jsonb_array_elements(COALESCE(msgs, '[]')) LOOP
        st := 'queued';
        s := m->'closes_step';
        IF jsonb_typeof(s) = 'object' AND m->>'automation_id' IS NOT NULL THEN
            UPDATE automation_steps SET state = s->>'state', message = s->>'message', result = s->>'result',
                error_type = s->>'error_type', error_message = s->>'error_message', error_trace = s->>'error_trace',
                wake_at = (s->>'wake_at')::double precision,
                attempts = COALESCE((s->>'attempts')::integer, attempts),
                finished_at = CASE WHEN s->>'state' IN ('done', 'skipped', 'failed', 'joined') THEN t_now END
            WHERE id = s->>'step_id' AND automation_id = m->>'automation_id' AND state = 'running';
        END IF;
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

-- mailgate_apply learns ``broadcasts_unreached``: queued broadcasts that found no instance running
-- when sent are stored dropped (otherwise they would stay queued, and ahead of later broadcasts).
CREATE OR REPLACE FUNCTION mailgate_apply(c jsonb, t_now double precision) RETURNS jsonb
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
    IF c ? 'broadcasts_unreached' THEN
        UPDATE automation_messages SET state = 'dropped', delivered_at = t_now
        WHERE id IN (SELECT jsonb_array_elements_text(c->'broadcasts_unreached'))
          AND broadcast_class IS NOT NULL AND state = 'queued';
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
