-- Scheduled tasks: which sessions take part (allow_cron, kept in step with the answers on every save)
-- and which (type, period) fires have run, so that each period runs once across daemons.
ALTER TABLE sessions ADD COLUMN allow_cron INTEGER NOT NULL DEFAULT 0;
CREATE INDEX sessions_cron ON sessions(interview, allow_cron, id);
CREATE INDEX sessions_accessed ON sessions(accessed_at);

CREATE TABLE cron_periods (
    type       TEXT NOT NULL,
    period     TEXT NOT NULL,
    holder     TEXT NOT NULL,
    claimed_at REAL NOT NULL,
    PRIMARY KEY (type, period)
);
