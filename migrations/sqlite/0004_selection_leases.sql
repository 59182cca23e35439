-- Vote-k's stage 2 runs on one replica at a time: the one whose lease on the selection
-- has not expired. The runner extends it while it works; a lease left to expire (its
-- replica died) is taken over by another replica, or by the same one restarted.
ALTER TABLE selections ADD COLUMN lease_owner TEXT;
ALTER TABLE selections ADD COLUMN lease_expires INTEGER;
