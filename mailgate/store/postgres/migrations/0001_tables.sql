-- The tables: the same as SQLite's (times are POSIX seconds, JSON travels as text), in PostgreSQL's types.
CREATE TABLE sessions (
    id          text PRIMARY KEY,
    interview   text NOT NULL,
    answers     text NOT NULL,
    version     integer NOT NULL,
    owner       text NOT NULL,
    created_at  double precision NOT NULL,
    modified_at double precision NOT NULL,
    accessed_at double precision NOT NULL,
    allow_cron  boolean NOT NULL DEFAULT false
);
CREATE INDEX sessions_interview ON sessions (interview, id);
CREATE INDEX sessions_cron ON sessions (interview, id) WHERE allow_cron;
CREATE INDEX sessions_accessed ON sessions (accessed_at);

CREATE TABLE session_leases (
    session_id   text PRIMARY KEY,
    holder       text NOT NULL,
    acquired_at  double precision NOT NULL,
    expires_at   double precision NOT NULL,
    budget_until double precision NOT NULL
);

CREATE TABLE tasks (
    seq             bigserial PRIMARY KEY,
    id              text NOT NULL UNIQUE,
    session_id      text NOT NULL,
    interview       text NOT NULL,
    action          text NOT NULL,
    arguments       text NOT NULL,
    "user"          text NOT NULL,
    ui_notification text,
    state           text NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    max_attempts    integer NOT NULL,
    worker          text,
    lease_until     double precision,
    created_at      double precision NOT NULL,
    started_at      double precision,
    finished_at     double precision,
    result          text,
    error_type      text,
    error_message   text,
    error_trace     text,
    variables       text
);
-- Claims scan this index: only the tasks not yet done are in it.
CREATE INDEX tasks_runnable ON tasks (seq) WHERE state IN ('queued', 'running');
CREATE INDEX tasks_session ON tasks (session_id);
CREATE INDEX tasks_state ON tasks (state, seq);

CREATE TABLE events (
    id         bigserial PRIMARY KEY,
    session_id text NOT NULL,
    kind       text NOT NULL,
    payload    text NOT NULL,
    created_at double precision NOT NULL
);
CREATE INDEX events_session ON events (session_id, id);

CREATE TABLE settings (
    name  text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE mailboxes (
    local_part text PRIMARY KEY,
    session_id text NOT NULL,
    key        text NOT NULL,
    idx        text NOT NULL,
    owner      text NOT NULL,
    created_at double precision NOT NULL,
    expires_at double precision
);
CREATE INDEX mailboxes_session ON mailboxes (session_id);

-- Raw messages are kept out of line (TOAST) uncompressed: mail is mostly compressed or encoded already.
CREATE TABLE raw_messages (
    sha256 text PRIMARY KEY,
    size   integer NOT NULL,
    raw    bytea NOT NULL
);
ALTER TABLE raw_messages ALTER COLUMN raw SET STORAGE EXTERNAL;

CREATE TABLE emails (
    seq            bigserial PRIMARY KEY,
    id             text NOT NULL UNIQUE,
    local_part     text NOT NULL,
    session_id     text NOT NULL,
    message_id     text,
    sha256         text NOT NULL,
    dedupe         text NOT NULL,
    size           integer NOT NULL,
    envelope       text NOT NULL,
    parsed         text NOT NULL,
    authentication text NOT NULL,
    received_at    double precision NOT NULL,
    UNIQUE (local_part, dedupe)
);
CREATE INDEX emails_session ON emails (session_id, seq);
CREATE INDEX emails_local_part ON emails (local_part, seq);
CREATE INDEX emails_sha256 ON emails (sha256);

CREATE TABLE cron_periods (
    type       text NOT NULL,
    period     text NOT NULL,
    holder     text NOT NULL,
    claimed_at double precision NOT NULL,
    PRIMARY KEY (type, period)
);
