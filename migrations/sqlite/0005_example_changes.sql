-- What each change to a task's examples did, by examples_version: the seqs it added
-- and removed, as JSON arrays. A replica that synced version v applies the changes
-- after v and reads nothing else; the last 1000 changes of each task are kept, and a
-- replica further behind compares all seqs instead.
CREATE TABLE example_changes (
    task        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    added       TEXT NOT NULL,
    removed     TEXT NOT NULL,
    PRIMARY KEY (task, version)
);
