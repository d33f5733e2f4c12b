-- Sessions, leases, background tasks and the per-session event log.
CREATE TABLE sessions (
    id          TEXT PRIMARY KEY,
    interview   TEXT NOT NULL,
    answers     TEXT NOT NULL,
    version     INTEGER NOT NULL,
    owner       TEXT NOT NULL,
    created_at  REAL NOT NULL,
    modified_at REAL NOT NULL,
    accessed_at REAL NOT NULL
);
CREATE INDEX sessions_interview ON sessions(interview, id);

CREATE TABLE session_leases (
    session_id   TEXT PRIMARY KEY,
    holder       TEXT NOT NULL,
    acquired_at  REAL NOT NULL,
    expires_at   REAL NOT NULL,
    budget_until REAL NOT NULL
);

CREATE TABLE tasks (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT NOT NULL UNIQUE,
    session_id      TEXT NOT NULL,
    interview       TEXT NOT NULL,
    action          TEXT NOT NULL,
    arguments       TEXT NOT NULL,
    user            TEXT NOT NULL,
    ui_notification TEXT,
    state           TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    max_attempts    INTEGER NOT NULL,
    worker          TEXT,
    lease_until     REAL,
    created_at      REAL NOT NULL,
    started_at      REAL,
    finished_at     REAL,
    result          TEXT,
    error_type      TEXT,
    error_message   TEXT,
    error_trace     TEXT,
    variables       TEXT
);
CREATE INDEX tasks_runnable ON tasks(state, seq) WHERE state IN ('queued', 'running');
CREATE INDEX tasks_session ON tasks(session_id);

CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL,
    kind       TEXT NOT NULL,
    payload    TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX events_session ON events(session_id, id);
