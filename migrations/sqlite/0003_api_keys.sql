-- API keys. Only the SHA-256 of a key is kept, so that every replica can check a key
-- and a copy of the database gives away none. Revoked keys stay, marked: auth stays on
-- once any key has existed, even when the last one is revoked.
CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    hash        TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    scope       TEXT NOT NULL,
    tasks       TEXT,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
