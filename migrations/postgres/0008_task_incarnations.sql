-- A random number drawn when a task is created, so that replica sync tells a task
-- deleted and created again apart from the one before it (a creation time in seconds
-- cannot: both can fall within one second).
ALTER TABLE tasks ADD COLUMN incarnation BIGINT NOT NULL DEFAULT 0;
