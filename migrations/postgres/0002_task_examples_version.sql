-- A counter of changes to a task's examples, bumped in the transaction of every insert
-- and delete, so that an idle replica sync reads one number per task.
ALTER TABLE tasks ADD COLUMN examples_version BIGINT NOT NULL DEFAULT 0;
