-- Long work that outlives a request, run in the background: evaluations. The request
-- and the progress so far are JSON, saved batch by batch; a lease (as on selections)
-- says which replica runs it, so a job whose replica died is resumed by another.
CREATE TABLE jobs (
    task          TEXT NOT NULL REFERENCES tasks(name) ON DELETE CASCADE,
    id            TEXT NOT NULL,
    kind          TEXT NOT NULL,
    state         TEXT NOT NULL,
    request       TEXT NOT NULL,
    result        TEXT NOT NULL,
    error         TEXT,
    lease_owner   TEXT,
    lease_expires INTEGER,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (task, id)
);
