-- Session lifetime: inactivity is measured by the last save of the answers (any user's, the cron
-- user's included), as docassemble measures it, so cron_daily's deletion scans modified_at.
CREATE INDEX sessions_modified ON sessions(modified_at);
