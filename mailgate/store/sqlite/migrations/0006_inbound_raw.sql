-- A queued message's raw bytes in a table of their own. In inbound_queue the blob came before other
-- columns, and SQLite builds a whole record whenever it writes a row: queueing a 25 MB message, and
-- every claim that set its lease, held the message twice more in memory. Here the blob is the last
-- column (a zero blob is then filled in place, piece by piece) and the lease updates never touch it.
CREATE TABLE inbound_raw (
    seq INTEGER PRIMARY KEY,
    raw BLOB NOT NULL
);
INSERT INTO inbound_raw (seq, raw) SELECT seq, raw FROM inbound_queue;
ALTER TABLE inbound_queue DROP COLUMN raw;
