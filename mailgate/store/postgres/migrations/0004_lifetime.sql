-- Session lifetime: inactivity is measured by the last save of the answers (any user's, the cron
-- user's included), as docassemble measures it, so cron_daily's deletion scans modified_at.
CREATE INDEX sessions_modified ON sessions (modified_at);

-- stash_data(): data sealed by the core with a secret the store never sees, until it expires.
CREATE TABLE stashes (
    key        text PRIMARY KEY,
    data       text NOT NULL,
    created_at double precision NOT NULL,
    expires_at double precision NOT NULL,
    ttl        double precision NOT NULL
);
CREATE INDEX stashes_expires ON stashes (expires_at);
