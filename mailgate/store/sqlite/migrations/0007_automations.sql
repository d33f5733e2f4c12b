-- Automations (AUTOMATIONS.md §4.3): durable workflows, their history (one step per node entered),
-- their messages and the journal of their steps' effects. JSON columns are the core's; times are
-- POSIX seconds. A running automation is due when wake_at <= now; a claim (holder, until) gives one
-- runner the right to commit it, fenced by version.
CREATE TABLE automations (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT NOT NULL UNIQUE,
    cls          TEXT NOT NULL,
    session_id   TEXT,
    state        TEXT NOT NULL CHECK (state IN ('running', 'finished', 'failed', 'killed')),
    data         TEXT NOT NULL,
    version      INTEGER NOT NULL,
    unique_key   TEXT,
    key          TEXT NOT NULL UNIQUE,
    owner        TEXT NOT NULL,
    wake_at      REAL,
    claim_holder TEXT,
    claim_until  REAL,
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL,
    finished_at  REAL
);
-- One running instance per class and business key, decided by the database.
CREATE UNIQUE INDEX automations_unique ON automations(cls, unique_key) WHERE state = 'running';
-- state in the index too: SQLite then answers the timer read (MIN(wake_at)) from the index alone.
CREATE INDEX automations_wake ON automations(wake_at, state) WHERE state = 'running';
CREATE INDEX automations_session ON automations(session_id);
CREATE INDEX automations_class ON automations(cls, state, seq);
CREATE INDEX automations_ended ON automations(state, finished_at);

CREATE TABLE automation_steps (
    seq                 INTEGER PRIMARY KEY AUTOINCREMENT,
    id                  TEXT NOT NULL UNIQUE,
    automation_id       TEXT NOT NULL,
    previous_id         TEXT,
    split_id            TEXT,
    node                TEXT NOT NULL,
    state               TEXT NOT NULL CHECK (state IN ('waiting', 'interaction', 'running', 'done', 'skipped', 'failed', 'joined')),
    message             TEXT,
    result              TEXT,
    error_type          TEXT,
    error_message       TEXT,
    error_trace         TEXT,
    wake_at             REAL,
    attempts            INTEGER NOT NULL DEFAULT 0,
    created_at          REAL NOT NULL,
    started_at          REAL,
    finished_at         REAL,
    assignee_user       TEXT,
    assignee_privileges TEXT,
    submitted_by        TEXT
);
CREATE INDEX automation_steps_automation ON automation_steps(automation_id, seq);
CREATE INDEX automation_steps_interaction ON automation_steps(state) WHERE state = 'interaction';

CREATE TABLE automation_messages (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT NOT NULL UNIQUE,
    automation_id   TEXT,
    broadcast_class TEXT,
    message         TEXT NOT NULL,
    token           TEXT,
    data            TEXT NOT NULL,
    sender          TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('queued', 'delivered', 'dropped')),
    result          TEXT,
    created_at      REAL NOT NULL,
    delivered_at    REAL
);
CREATE INDEX automation_messages_queued ON automation_messages(automation_id, seq) WHERE state = 'queued';
CREATE INDEX automation_messages_automation ON automation_messages(automation_id, seq);

CREATE TABLE automation_journal (
    step_id    TEXT NOT NULL,
    call_index INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    result     TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (step_id, call_index)
);

-- A background task started by an automation's step (or threaded=True) names it.
ALTER TABLE tasks ADD COLUMN automation_id TEXT;
