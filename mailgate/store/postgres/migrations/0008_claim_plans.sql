-- The automations' claim reads its automations' open steps and queued messages one automation at a
-- time through the automation_id indexes (issue 17). plpgsql keeps the plans of a function's
-- statements per connection, and after five calls it may keep a generic plan, chosen from the tables'
-- sizes at that time and kept until the tables are analysed again. A runner that claimed while the
-- tables were small (every daemon's first claims on a new database) kept reading the claimed
-- automations' steps (automation_id = ANY(ids)) by a sequential scan of automation_steps: 17-40 ms per
-- claim with 100,000 automations waiting instead of about 1 ms, and a runner's claims go one after
-- the other, so its rate fell with the number waiting. Without autovacuum nothing analyses the tables
-- and the plan stays for the connection's life; even a new plan misjudges ANY(ids) without the
-- tables' statistics (2,500 rows expected for 16 automations' steps). A lateral subquery kept apart
-- (OFFSET 0) looks up one automation_id per row, which an index answers at any table size and under
-- any plan (forcing a custom plan per call instead cost about 1 ms more per claim).
CREATE OR REPLACE FUNCTION mailgate_claim_automations(who text, lim integer, lease double precision, t double precision)
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
        'steps', (SELECT COALESCE(json_agg(row_to_json(s) ORDER BY s.seq), '[]') FROM unnest(ids) AS i(id)
                  CROSS JOIN LATERAL (SELECT * FROM automation_steps x WHERE x.automation_id = i.id
                                      AND x.state IN ('waiting', 'interaction', 'running') OFFSET 0) AS s),
        'messages', (SELECT COALESCE(json_agg(row_to_json(m) ORDER BY m.seq), '[]') FROM unnest(ids) AS i(id)
                     CROSS JOIN LATERAL (SELECT * FROM automation_messages x WHERE x.automation_id = i.id
                                         AND x.state = 'queued' OFFSET 0) AS m));
END $$;
