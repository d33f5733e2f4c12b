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
