-- Mailboxes (per-session addresses), received e-mails and their raw bytes, and process settings.
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE mailboxes (
    local_part TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    key        TEXT NOT NULL,
    idx        TEXT NOT NULL,
    owner      TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL
);
CREATE INDEX mailboxes_session ON mailboxes(session_id);

CREATE TABLE raw_messages (
    sha256 TEXT PRIMARY KEY,
    size   INTEGER NOT NULL,
    raw    BLOB NOT NULL
);

CREATE TABLE emails (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT NOT NULL UNIQUE,
    local_part     TEXT NOT NULL,
    session_id     TEXT NOT NULL,
    message_id     TEXT,
    sha256         TEXT NOT NULL,
    dedupe         TEXT NOT NULL,
    size           INTEGER NOT NULL,
    envelope       TEXT NOT NULL,
    parsed         TEXT NOT NULL,
    authentication TEXT NOT NULL,
    received_at    REAL NOT NULL,
    UNIQUE (local_part, dedupe)
);
CREATE INDEX emails_session ON emails(session_id, seq);
CREATE INDEX emails_sha256 ON emails(sha256);
