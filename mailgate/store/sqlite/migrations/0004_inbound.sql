-- The inbound queue: a message is answered 250 once it is here (raw bytes and envelope); a processor
-- claims it with a lease, turns it into its e-mails, tasks and events, and deletes it in the same
-- transaction. seq is the arrival order.
CREATE TABLE inbound_queue (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    sha256      TEXT NOT NULL,
    size        INTEGER NOT NULL,
    raw         BLOB NOT NULL,
    envelope    TEXT NOT NULL,
    received_at REAL NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    worker      TEXT,
    lease_until REAL
);
