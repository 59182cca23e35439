-- Who asked for each background job (an API key's id, or a client's address), so
-- that the running jobs one client may have are counted on every replica.
ALTER TABLE jobs ADD COLUMN requester TEXT;
CREATE INDEX jobs_running_by_requester ON jobs (requester, state);
CREATE INDEX jobs_by_state ON jobs (state, updated_at);
