-- Tasks, their annotated examples, their unlabeled pool, and selective-annotation runs.
-- Embeddings are little-endian f32 bytes, stored with the embedder that made them so
-- that a restart does not re-embed and a change of embedder does.

CREATE TABLE tasks (
    name        TEXT PRIMARY KEY,
    spec        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE examples (
    seq         BIGSERIAL PRIMARY KEY,
    task        TEXT NOT NULL REFERENCES tasks(name) ON DELETE CASCADE,
    id          TEXT NOT NULL,
    text        TEXT NOT NULL,
    text_pair   TEXT,
    label       TEXT NOT NULL,
    embedding   BYTEA NOT NULL,
    embedder    TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    UNIQUE (task, id)
);

CREATE TABLE pool_items (
    seq         BIGSERIAL PRIMARY KEY,
    task        TEXT NOT NULL REFERENCES tasks(name) ON DELETE CASCADE,
    id          TEXT NOT NULL,
    text        TEXT NOT NULL,
    text_pair   TEXT,
    embedding   BYTEA NOT NULL,
    embedder    TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    UNIQUE (task, id)
);

CREATE TABLE selections (
    task        TEXT NOT NULL REFERENCES tasks(name) ON DELETE CASCADE,
    id          TEXT NOT NULL,
    method      TEXT NOT NULL,
    state       TEXT NOT NULL,
    request     TEXT NOT NULL,
    result      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (task, id)
);
